"""Time to an accurate model: wall-clock from process start to the first epoch that meets each quality bar.

    python benchmarks/time_to_accuracy.py [--h5 FILE | --samples 4096 --size 256] [--only default,lightning]
        [--max-epochs 20] [--repeats 2]

The bars: validation F1 ≥ 0.99 and mean localisation error ≤ 0.5, 0.3, 0.25 and 0.2 px (issue 28), on the same
seeded split (10 %, seed 42) and measured with glint-track's decoder and metrics in every row. Every row runs in a
fresh process and trains its epochs to the end (the rows that are not glint-track up to --max-epochs), so the
table shows where each plateaus; the clock starts just before that process is started (imports, data loading,
workers, compilation all count). Also per row: when its first training step was launched, and how long the
command took to return after its last epoch ended (for glint-track: logging the model and ending the run).

As a returning user works: one untimed glint-track run first warms the machine (page cache, the decoded-data
cache, CUDA's caches) and creates the MLflow store every row then logs to (an existing store). With --cold, as a
first run: no warm-up, a new store, an empty decoded-data cache (run it first on a machine that just started).

(a) research    the research script's loop: per-sample Dataset, DataLoader (6 workers, pinned memory), fp32,
                batch 16, Adam 1e-3, focal loss, the head at PyTorch's default initialisation, a checkpoint
                every epoch; each checkpoint is decoded with glint-track's decoder between epochs, its time
                taken off the clock.
(b) default     `glint-track train --h5 FILE` with no flag: its own epochs, as users type it.
    before      the same command from another checkout (--before TREE): the default before a change.
(r) recipes     `glint-track train` with the flags in RECIPES (those with their own --epochs train that many).
(p) lightning   what a user would write instead: a LightningModule with the same UNet, loss (peak-bce), split,
                Adam 1e-3 and batch 16; bf16-mixed, a per-sample DataLoader with 6 workers, MLFlowLogger
                (log_model="all") and ModelCheckpoint(save_last=True); validation with glint-track's metrics.

The tables are printed last; each row's epochs go to WORKDIR/repeatN/<row>/epochs.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import child_env, make_workdir, synthetic_file, train_command

F1_BAR, PX_BARS = 0.99, (0.5, 0.3, 0.25, 0.2)
SPLIT, SEED = 0.1, 42
#: name → the flags a glint-track recipe adds to `glint-track train`
RECIPES = {
    "default": [],
    "default-eager": ["--no-cuda-graphs"],  # the default without CUDA graphs
    "fast": ["--batch-size", "256", "--lr", "4e-3", "--compile"],  # the README's fastest per epoch until issue 28
    # larger batches: the learning rate scaled up (about with the square root of the batch) and decayed to 0 over
    # the recipe's own epochs (cosine), which is what lets a large batch place glints finely in few steps
    "b64-cosine": ["--batch-size", "64", "--lr", "2e-3", "--scheduler", "cosine", "--epochs", "12"],
    "b128-cosine": ["--batch-size", "128", "--lr", "3e-3", "--scheduler", "cosine", "--epochs", "14"],
    "b256-cosine": ["--batch-size", "256", "--lr", "4e-3", "--scheduler", "cosine", "--epochs", "16"],
}
ROWS = ["research", *RECIPES, "lightning"]
#: Rows that run the command exactly as typed, their own number of epochs (the others train --max-epochs).
AS_TYPED = ("default", "before")
#: The checkout the row "before" runs (--before).
BEFORE: Path | None = None
_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO "
_EPOCH_LINE = re.compile(_STAMP + r"epoch (\d+)/\d+ ")
_FIRST_STEP = re.compile(r"first step launched ([\d.]+) s after the command started")
_RUN_LINE = re.compile(_STAMP + r"run ([0-9a-f]{32}): ")


# -- the rows that are not glint-track: each runs as `python time_to_accuracy.py --row NAME` -----------
def _split_arrays(h5: Path):
    from glint_track.data.batches import split_indices
    from glint_track.data.glint_file import load_glint_file
    from glint_track.glints import ground_truth

    data = load_glint_file(h5, None)
    train_idx, val_idx = split_indices(data.num_samples, SPLIT, SEED)
    truth = ground_truth(data.points, data.present, data.heatmaps)
    return data, train_idx, val_idx, truth


class _PerSample:
    """The research script's Dataset: one (image, heat-maps) pair per index, as float."""

    def __init__(self, images, heatmaps) -> None:
        self.images, self.heatmaps = images, heatmaps

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import numpy as np
        import torch

        image = torch.from_numpy(self.images[i]).float().unsqueeze(0) / 255.0
        return image, torch.from_numpy(self.heatmaps[i].astype(np.float32))


def _glint_scores(model, images, truth, device, batch: int = 64) -> dict[str, float]:
    """Val F1 and mean error of `model` on uint8 `images`, with glint-track's decoder and metrics."""
    import torch

    from glint_track.constants import DEFAULT_MATCH_RADIUS, DEFAULT_THRESHOLD
    from glint_track.glints import GlintMetrics, decode

    metrics = GlintMetrics(truth.xy.shape[1], DEFAULT_MATCH_RADIUS)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = (torch.as_tensor(images[i : i + batch]).float().unsqueeze(1) / 255.0).to(device)
            index = torch.arange(i, min(i + batch, len(images)))
            metrics.update(decode(model(x).float().cpu(), DEFAULT_THRESHOLD), truth.take(index))
    result = metrics.compute()
    return {"f1": result["f1"], "loc_err": result["loc_err_mean"]}


def research(h5: Path, out: Path, max_epochs: int, deadline: float) -> None:
    import torch
    from torch.utils.data import DataLoader

    from glint_track.model import GlintUNet
    from glint_track.training.losses import focal_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data, train_idx, val_idx, truth = _split_arrays(h5)
    images, heatmaps = data.images.numpy(), data.heatmaps.numpy()
    pin = device.type == "cuda"
    loader = DataLoader(
        _PerSample(images[train_idx], heatmaps[train_idx]),
        batch_size=16,
        shuffle=True,
        num_workers=6,
        pin_memory=pin,
        persistent_workers=True,
    )
    val_loader = DataLoader(
        _PerSample(images[val_idx], heatmaps[val_idx]),
        batch_size=16,
        num_workers=6,
        pin_memory=pin,
        persistent_workers=True,
    )
    torch.manual_seed(SEED)
    model = GlintUNet(data.num_glints, 16)
    model.out_conv.reset_parameters()  # the research model had no prior on its head
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    val_truth, val_images, off_clock = truth.take(torch.as_tensor(val_idx)), images[val_idx], 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = focal_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the research loop printed it every step
            _first_step(out)
        model.eval()
        with torch.no_grad():  # its validation: the loss
            sum(focal_loss(model(x.to(device)), y.to(device)).item() * len(x) for x, y in val_loader)
        state = {"epoch": epoch, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
        torch.save(state, out / "latest_checkpoint.pth")
        ended = time.time()
        scores = _glint_scores(model, val_images, val_truth, device)  # glint-track's decoder: off the clock
        _record(out, epoch, ended - off_clock, scores)
        off_clock += time.time() - ended
        if time.time() > deadline:
            return


def lightning(h5: Path, out: Path, max_epochs: int, deadline: float) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger
    from torch.utils.data import DataLoader

    from glint_track.model import GlintUNet
    from glint_track.training.losses import GlintLoss

    data, train_idx, val_idx, truth = _split_arrays(h5)
    images, heatmaps = data.images.numpy(), data.heatmaps.numpy()
    val_images, val_truth = images[val_idx], truth.take(torch.as_tensor(val_idx))

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.loss = GlintUNet(data.num_glints, 16), GlintLoss("peak-bce")

        def training_step(self, batch, _):
            terms = self.loss(self.model(batch[0]), batch[1])
            self.log("train_loss", terms["loss"])
            return terms["loss"]

        def on_train_batch_end(self, *_) -> None:
            _first_step(out)

        def validation_step(self, batch, _):
            self.log("val_loss", self.loss(self.model(batch[0]), batch[1])["loss"])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Clock(Callback):
        def on_validation_epoch_end(self, trainer, module) -> None:
            if trainer.sanity_checking:
                return
            ended, off = time.time(), getattr(self, "off", 0.0)
            scores = _glint_scores(module.model, val_images, val_truth, module.device)  # off the clock
            _record(out, trainer.current_epoch + 1, ended - off, scores)
            self.off = off + time.time() - ended
            module.model.train()

    def loader(idx, shuffle: bool) -> DataLoader:
        return DataLoader(
            _PerSample(images[idx], heatmaps[idx]),
            batch_size=16,
            shuffle=shuffle,
            num_workers=6,
            pin_memory=True,
            persistent_workers=True,
        )

    torch.manual_seed(SEED)
    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=os.environ["MLFLOW_TRACKING_URI"], log_model="all")
    trainer = L.Trainer(
        max_epochs=max_epochs,
        precision="bf16-mixed",
        logger=logger,
        enable_progress_bar=False,
        callbacks=[ModelCheckpoint(dirpath=out / "ckpt", monitor="val_loss", save_last=True), Clock()],
        max_time={"seconds": max(1, int(deadline - time.time()))},
    )
    trainer.fit(Module(), loader(train_idx, True), loader(val_idx, False))


def _record(out: Path, epoch: int, t: float, scores: dict[str, float]) -> None:
    """Append the epoch's end time and scores."""
    with open(out / "epochs.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "t": t} | scores) + "\n")


def _first_step(out: Path) -> None:
    """Note when the first training step was launched (once)."""
    path = out / "first_step.json"
    if not path.exists():
        path.write_text(json.dumps({"t": time.time()}))


# -- the harness: one fresh process per row, timed from just before it starts ------------------------
def run_row(name: str, h5: Path, workdir: Path, store: str, max_epochs: int, budget_s: float) -> dict:
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    for old in ("epochs.jsonl", "first_step.json"):
        (out / old).unlink(missing_ok=True)
    env = child_env(XDG_CACHE_HOME=str(workdir.parent / "cache"), MLFLOW_TRACKING_URI=store)
    if name == "before":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BEFORE), os.environ.get("PYTHONPATH")]))
    if name in RECIPES or name == "before":
        flags = RECIPES.get(name, [])
        epochs = [] if "--epochs" in flags or name in AS_TYPED else ["--epochs", str(max_epochs)]
        cmd = [*train_command("--h5", str(h5)), *epochs, "--output-dir", str(out / "run"), *flags]
    else:
        cmd = [sys.executable, __file__, "--row", name, "--h5", str(h5), "--workdir", str(workdir)]
        cmd += ["--max-epochs", str(max_epochs), "--budget-s", str(budget_s)]
    start = time.time()
    with open(out / "stdout.log", "w") as log:
        # from the row's own folder: `python -m` puts the working folder first on sys.path, which would make the row
        # "before" import this checkout's glint_track from the repository's root
        proc = subprocess.run(
            cmd, env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT, timeout=budget_s + 600, check=False
        )
    returned = time.time()
    ours = name in RECIPES or name == "before"
    epochs, first_step = _glint_track_epochs(out, store) if ours else _read_epochs(out)
    steady = (epochs[-1]["t"] - epochs[0]["t"]) / (len(epochs) - 1) if len(epochs) > 1 else float("nan")
    bars = {}
    for bar in PX_BARS:
        reached = next((e for e in epochs if e["f1"] >= F1_BAR and e["loc_err"] <= bar), None)
        bars[str(bar)] = None if reached is None else {"epoch": reached["epoch"], "s": reached["t"] - start}
    best = min((e for e in epochs if e["f1"] >= F1_BAR), key=lambda e: e["loc_err"], default=None)
    return {
        "row": name,
        "rc": proc.returncode,
        "wall_s": returned - start,
        "epochs": len(epochs),
        "first_step_s": first_step if ours else (first_step - start if first_step else None),
        "first_epoch_s": epochs[0]["t"] - start if epochs else None,
        "epoch_s": steady,
        "bars": bars,
        "best": best and {"epoch": best["epoch"], "f1": best["f1"], "loc_err": best["loc_err"]},
        "returned_after_last_epoch_s": returned - epochs[-1]["t"] if epochs else None,
    }


def _read_epochs(out: Path) -> tuple[list[dict], float | None]:
    path, first = out / "epochs.jsonl", out / "first_step.json"
    epochs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return epochs, json.loads(first.read_text())["t"] if first.exists() else None


def _stamp(match: re.Match) -> float:
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _glint_track_epochs(out: Path, store: str) -> tuple[list[dict], float | None]:
    """Each epoch's end (its log line) and val F1 / mean error (its MLflow metrics), and the seconds from the
    process's start to its first step (the first epoch's line says it)."""
    from mlflow.tracking import MlflowClient

    log = out / "run" / "training.log"
    lines = log.read_text().splitlines() if log.exists() else []
    ends = {int(m.group(2)): _stamp(m) for m in filter(None, map(_EPOCH_LINE.match, lines))}
    first = next((float(m.group(1)) for m in filter(None, map(_FIRST_STEP.search, lines))), None)
    run_id = next((m.group(2) for m in filter(None, map(_RUN_LINE.match, lines))), None)
    if run_id is None:
        return [], first
    client = MlflowClient(store)
    f1 = {m.step: m.value for m in client.get_metric_history(run_id, "val_f1")}
    err = {m.step: m.value for m in client.get_metric_history(run_id, "val_loc_err_mean")}
    epochs = [{"epoch": e, "t": ends[e], "f1": f1[e], "loc_err": err[e]} for e in sorted(ends) if e in f1 and e in err]
    return epochs, first


def warm_up(h5: Path, workdir: Path, store: str) -> None:
    """One untimed default run: the MLflow store exists afterwards, the caches are warm, as for a returning user."""
    env = child_env(XDG_CACHE_HOME=str(workdir / "cache"), MLFLOW_TRACKING_URI=store)
    cmd = [*train_command("--h5", str(h5)), "--epochs", "1", "--output-dir", str(workdir / "warm-up")]
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900, check=True)


def table(results: list[dict], header: str) -> str:
    """Per row: when the first step was launched, then the seconds to each bar with how many times sooner than (a)
    and (p) (a row that never met a bar: "—"), the steady epoch, the best error (and its epoch), and how long the
    command took to return after its last epoch."""
    by_row = {r["row"]: r for r in results}

    def cell(r: dict, bar: str) -> str:
        reached = r["bars"][bar]
        if reached is None:
            return "—"
        ratios = []
        for base, tag in (("research", "a"), ("lightning", "p")):
            other = by_row.get(base, {}).get("bars", {}).get(bar)
            if base in by_row and base != r["row"]:
                ratios.append(f"{other['s'] / reached['s']:.2f}× {tag}" if other else f"> {tag}")
        return f"{reached['s']:.1f} (ep {reached['epoch']}{'; ' if ratios else ''}{', '.join(ratios)})"

    def num(v: float | None, fmt: str = ".1f") -> str:
        return "—" if v is None or v != v else format(v, fmt)

    bars = [str(b) for b in PX_BARS]
    lines = [
        header,
        "",
        "| row | first step s | "
        + " | ".join(f"s to ≤ {b} px" for b in bars)
        + " | steady epoch s | best px at F1 ≥ 0.99 (epoch) | returns s after last epoch |",
        "|---|---|" + "---|" * len(bars) + "---|---|---|",
    ]
    for r in results:
        best = r["best"]
        best_cell = f"{best['loc_err']:.3f} ({best['epoch']})" if best else "—"
        lines.append(
            f"| {r['row']} | {num(r['first_step_s'])} | " + " | ".join(cell(r, b) for b in bars) + " | "
            f"{num(r['epoch_s'], '.2f')} | {best_cell} | {num(r['returned_after_last_epoch_s'], '.2f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h5", type=Path)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--only", help=f"comma-separated rows of: {', '.join(ROWS)}")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=900, help="a row stops after this many seconds")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--cold", action="store_true", help="no warm-up run: a new MLflow store, an empty cache")
    parser.add_argument("--before", type=Path, help="a checkout before a change: the row 'before' runs its default")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # in the child process
    args = parser.parse_args()
    global BEFORE
    BEFORE = args.before.resolve() if args.before else None
    if args.row:
        out = args.workdir / args.row
        {"research": research, "lightning": lightning}[args.row](
            args.h5, out, args.max_epochs, time.time() + args.budget_s
        )
        return
    workdir = make_workdir(args.workdir, "glint-tta-")
    h5 = args.h5 or synthetic_file(workdir, "tta", args.samples, args.size)
    rows = args.only.split(",") if args.only else ROWS + ["before"] * bool(BEFORE)
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    if not args.cold:
        warm_up(h5, workdir, store)
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    tables = []
    for repeat in range(1, args.repeats + 1):
        results = []
        for name in rows:
            results.append(run_row(name, h5, workdir / f"repeat{repeat}", store, args.max_epochs, args.budget_s))
            print(json.dumps(results[-1]), flush=True)
        header = f"{dt.date.today()} · {gpu} · torch {torch.__version__} · {h5.name} · run {repeat} of {args.repeats}"
        tables.append(table(results, header))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
