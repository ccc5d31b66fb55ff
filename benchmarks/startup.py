"""Where the time before an accurate model goes: a timeline of `glint-track train`'s start-up and epochs.

    python benchmarks/startup.py --h5 FILE [--epochs 3] [--batch-size 16] [--lr 1e-3]

Run it as a fresh process (the timeline starts when the interpreter does): imports, the settings, the data
(loading, device placement), the training parts, the MLflow run, each epoch and the logged model, each as
seconds since the process started. The timeline is printed last.
"""

from __future__ import annotations

import time

T0 = time.time()  # as near the interpreter's start as a script gets (the harness adds the launch)

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

marks: list[tuple[str, float]] = []


def mark(what: str) -> None:
    marks.append((what, time.time() - T0))


def timed(owner: object, name: str, label: str, after=None) -> None:
    """Wrap `owner.name` so that its end is marked (and `after` runs on its result)."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if after is not None:
            after(result)
        mark(label)
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h5", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    import torch  # noqa: F401  (timed: the first import of torch)

    mark("import torch")
    import mlflow  # noqa: F401

    mark("import mlflow")
    from glint_track.training import loop, run
    from glint_track.training.config import TrainConfig

    mark("import glint_track.training.loop")

    timed(loop, "settings", "settings (and the tracking server check)")
    timed(loop, "training_data", "data loaded, checked and placed")
    timed(loop, "training_parts", "model, optimizer, loss built")
    timed(run.TrackedRun, "open", "MLflow run created and described")
    epochs = iter(range(1, args.epochs + 1))
    timed(loop, "fit_epoch", "epoch", after=lambda _: marks.append((f"epoch {next(epochs)}", time.time() - T0)))
    timed(run.TrackedRun, "log_best_model", "best model evaluated and logged")
    from glint_track.cli.train_options import TRAIN_OPTIONS  # noqa: F401  (the CLI's import cost, for reference)

    loop.train(TrainConfig(h5=str(args.h5), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr))
    mark("train() returned")
    print("\nstart-up timeline, seconds since the process started")
    previous = 0.0
    for what, t in marks:
        if what == "epoch":
            continue
        print(f"{t:8.2f}  (+{t - previous:6.2f})  {what}")
        previous = t


if __name__ == "__main__":
    main()
