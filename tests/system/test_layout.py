"""The package's architecture, checked: imports point down the layers, inference never loads training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import TINY

import glint_track

PACKAGE = Path(glint_track.__file__).parent
#: Top to bottom, as in the README's code map: a module may import only from its own layer or those below.
LAYERS = [
    "cli",
    "training",
    "inference",
    "engine",
    "tracking",
    "data",
    "checkpoint",
    "figures",
    "glints",
    "model",
    "errors|files|logs|constants|text",
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    if top in ("__init__", "__main__"):
        return -1
    return next(i for i, names in enumerate(LAYERS) if top in names.split("|"))


def _imports() -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("glint_track", *path.relative_to(PACKAGE).with_suffix("").parts))
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("glint_track."):
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.startswith("glint_track.")}
        found[module] = names
    return found


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{m} imports {i}" for m, names in _imports().items() for i in names if _layer(m) >= 0 and _layer(i) < _layer(m)
    ]
    assert upward == []


def test_predict_and_the_served_model_load_nothing_of_training() -> None:
    code = (
        "import sys, glint_track.inference.predict, glint_track.inference.serving, glint_track.inference.evaluate; "
        "print(sorted(m for m in sys.modules if m.startswith('glint_track.training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_argument_errors_import_nothing_heavy() -> None:
    """`glint-track --help` and a mistyped option answer before torch, numpy, h5py or MLflow is imported (each
    of those takes seconds to import on a slow disk; the CLI imports them inside the command that runs)."""
    code = (
        "import sys; from click.testing import CliRunner; from glint_track.cli import main\n"
        "for args in (['--help'], ['train', '--help'], ['sweep', '--help'], ['predict', '--help'], ['pack', '--help'],"
        " ['train', '--epochs', 'x'], ['evaluate', '--no-such-option'], ['synth', '--bits', '9'],"
        " ['train', '--h5', 'd.h5', '--epochs', '-3'], ['train', '--resume', 'abc', '--lr', '-1']):\n"
        "    assert CliRunner().invoke(main, args).exit_code in (0, 2), args\n"
        "print(sorted(m for m in ('torch', 'numpy', 'h5py', 'mlflow', 'PIL', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_train_reaches_its_training_loop_without_mlflow(tiny_h5: Path, tmp_path: Path) -> None:
    """A new run's MLflow import (seconds) happens in the thread that opens the run beside the first epoch, never
    on the way to the first step: the command itself imports nothing of MLflow before it calls train()."""
    code = (
        "import sys; from click.testing import CliRunner; from glint_track.cli import main\n"
        "import glint_track.training.loop as loop\n"
        "real = loop.train\n"
        "def train(*args, **kwargs):\n"
        "    print('mlflow imported before train():', 'mlflow' in sys.modules, file=sys.__stdout__)\n"
        "    return real(*args, **kwargs)\n"
        "loop.train = train\n"
        f"result = CliRunner().invoke(main, ['train', '--h5', {str(tiny_h5)!r}, *{TINY!r}, '--epochs', '1'])\n"
        "assert result.exit_code == 0, result.output\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True
    )
    assert "mlflow imported before train(): False" in out.stdout, out.stdout + out.stderr


def test_no_module_over_400_lines_and_no_function_over_80() -> None:
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long_modules.append(path.name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.name}:{node.name}")
    assert (long_modules, long_functions) == ([], [])


def test_a_command_that_succeeded_ends_without_finalising_modules_but_after_exit_handlers(tmp_path: Path) -> None:
    """`glint-track` ends once its threads are done and the exit handlers ran (logging's flush, MLflow's), not
    after Python finalises every module: that teardown takes seconds with torch and MLflow loaded."""
    code = (
        "import atexit, sys, threading, time\n"
        "from glint_track.cli import run\n"
        "class Module:\n"
        "    def __del__(self): print('finalised', flush=True)\n"
        "sys.modules['finalised_at_teardown'] = Module()\n"
        "atexit.register(lambda: print('exit handler', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', flush=True))).start()\n"
        "sys.argv = ['glint-track', '--version']\n"
        "run()\n"
    )
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.splitlines()[-2:] == ["thread done", "exit handler"], ok
    failed = subprocess.run([sys.executable, "-m", "glint_track", "train", "--epochs", "x"], capture_output=True)
    assert failed.returncode == 2  # a failure leaves the usual way, with its exit status


def test_help_quotes_the_demo_the_readme_measured() -> None:
    """`glint-track --help` and the README quoted different demo accuracies and times: both now state the one
    measurement (F1, pixel error, training time) and must stay the same when it is re-measured."""
    import re

    from glint_track.cli.main import main

    line = next(ln for ln in main.help.splitlines() if "train --h5 demo.h5" in ln)
    minutes, f1, error = re.search(r"(\d+ min [\d–]+ s) on 2 CPU cores, val F1 ([\d.]+), ([\d.]+ px)", line).groups()
    readme = " ".join((PACKAGE.parent / "README.md").read_text().split())
    assert f"validation F1 of {f1} with glints placed to {error}" in readme
    assert f"`train` {minutes} from Enter to its return" in readme
