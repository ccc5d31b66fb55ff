"""Time to an accurate model: training recipes compared on one data file, each in a fresh `glint-track train`.

    python benchmarks/recipes.py [--h5 FILE | --samples 512 --size 128] [--epochs 15] [--only default,focal] \
        [--seeds 42,7]

For every recipe (the flags it adds to `glint-track train`) it reports the glint metrics the run logged each
epoch: the first epoch whose validation F1 reaches 0.95, and whose mean localisation error is at or below
--target-px as well, the seconds of training until then, and the final and best-checkpoint values.
The table is printed last; --json keeps every epoch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import child_env, make_workdir, synthetic_file, train_command
from mlflow.tracking import MlflowClient

#: name → the flags that recipe adds to `glint-track train` (the default adds none)
RECIPES = {
    "default": [],
    "focal": ["--loss", "focal", "--lr", "1e-3", "--scheduler", "none"],  # the research script's recipe
    "focal-3e-3": ["--loss", "focal", "--lr", "3e-3", "--scheduler", "none"],
    "bce-3e-3": ["--loss", "bce", "--lr", "3e-3", "--scheduler", "none"],
    "dice-3e-3": ["--loss", "dice", "--lr", "3e-3", "--scheduler", "none"],
}


def train(workdir: Path, h5: Path, name: str, flags: list[str], epochs: int, extra: list[str]) -> dict:
    env = child_env(XDG_CACHE_HOME=str(workdir / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    cmd = [
        *train_command("--h5", str(h5)),
        "--epochs",
        str(epochs),
        "--run-name",
        name,
        "--no-system-metrics",
        *flags,
        *extra,
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (workdir / f"{name}.log").write_text(out.stderr)
    if out.returncode != 0:
        return {"recipe": name, "error": out.stderr.strip().splitlines()[-1:]}
    run_id = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("Run "))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    history = {
        key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in ("val_f1", "val_loc_err_mean", "epoch_time_s")
    }
    best = client.get_run(run_id).data.metrics
    return {
        "recipe": name,
        "run_id": run_id,
        "wall_s": wall,
        **history,
        "best_f1": best["best_val_f1"],
        "best_err": best["best_val_loc_err_mean"],
    }


def first_epoch(result: dict, target_px: float | None) -> int | None:
    for epoch, (f1, err) in enumerate(zip(result["val_f1"], result["val_loc_err_mean"]), start=1):
        if f1 >= 0.95 and (target_px is None or err <= target_px):
            return epoch
    return None


def table(results: list[dict], target_px: float) -> str:
    head = (
        f"| recipe | F1 ≥ 0.95 at epoch | + error ≤ {target_px} px at epoch (s of training) | final F1 | final "
        "error px "
        f"| best checkpoint F1 / px | wall s |"
    )
    lines = [head, "|" + "---|" * 7]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['recipe']} | failed: {r['error']} | | | | | |")
            continue
        f1_at, both_at = first_epoch(r, None), first_epoch(r, target_px)
        seconds = f" ({sum(r['epoch_time_s'][:both_at]):.0f} s)" if both_at else ""
        lines.append(
            f"| {r['recipe']} | {f1_at or '—'} | {both_at or '—'}{seconds} | {r['val_f1'][-1]:.3f} | "
            f"{r['val_loc_err_mean'][-1]:.2f} | {r['best_f1']:.3f} / {r['best_err']:.2f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h5", type=Path, help="data file (default: synthetic, --samples × --size²)")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", default="42", help="comma-separated: each recipe is trained once per seed")
    parser.add_argument("--only", help=f"comma-separated recipes, from: {', '.join(RECIPES)}")
    parser.add_argument("--target-px", type=float, default=0.6)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, help="also write every epoch's values here")
    parser.add_argument("train_args", nargs="*", help="after --: flags every recipe gets, e.g. -- --device cuda")
    args = parser.parse_args()
    workdir = make_workdir(args.workdir, "glint-recipes-")
    h5 = args.h5.resolve() if args.h5 else synthetic_file(workdir, "recipes", args.samples, args.size)
    names = args.only.split(",") if args.only else list(RECIPES)
    seeds = args.seeds.split(",")
    results = []
    for name in names:
        for seed in seeds:
            label = name if len(seeds) == 1 else f"{name} (seed {seed})"
            results.append(train(workdir, h5, label, [*RECIPES[name], "--seed", seed], args.epochs, args.train_args))
        print(
            json.dumps(
                {k: v for k, v in results[-1].items() if k not in ("val_f1", "val_loc_err_mean", "epoch_time_s")}
            ),
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\n{h5.name}, {args.epochs} epochs\n{table(results, args.target_px)}")


if __name__ == "__main__":
    main()
