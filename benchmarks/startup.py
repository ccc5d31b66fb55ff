"""Where the time before an accurate model goes: a timeline of `glint-track train`'s start-up and epochs.

    python benchmarks/startup.py --h5 FILE [--epochs 3] [--batch-size 16] [--lr 1e-3]

Run it as a fresh process (the timeline starts when the interpreter does): imports, the settings, the data
(loading, device placement), the training parts, the first step, the MLflow run (opened in a thread beside the
first epoch), each epoch, the logged model and the run's end, each as seconds since the process started (marks
from the opening thread are placed by their time). The timeline is printed last.
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
    import torch

    mark("import torch")
    from glint_track.training import graphs, loop, opening
    from glint_track.training.config import TrainConfig

    mark("import glint_track.training.loop (no MLflow)")

    timed(loop, "settings", "settings")
    timed(loop, "training_data", "data loaded, checked and placed")
    timed(loop, "training_parts", "model, optimizer, loss built")
    timed(graphs.GraphedStep, "_capture", "CUDA graph of the step captured (3 warm-up steps, then capture)")
    first = []

    def first_step(self, step: int, real=loop.BetweenSteps.__call__) -> None:
        real(self, step)
        if not first:
            first.append(step)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            mark("first training step done")

    loop.BetweenSteps.__call__ = first_step

    def after_opening(_) -> None:  # training.tracked_run (and MLflow) exist only once the opening thread imported them
        from glint_track.training import tracked_run as run

        timed(run.TrackedRun, "log_best_model", "best model evaluated and logged")
        timed(run.TrackedRun, "close", "run ended (FINISHED)")

    timed(
        opening.RunOpening,
        "_open",
        "MLflow imported, store opened, run created and described (beside epoch 1)",
        after=after_opening,
    )
    epochs = iter(range(1, args.epochs + 1))
    timed(loop, "fit_epoch", "epoch", after=lambda _: marks.append((f"epoch {next(epochs)}", time.time() - T0)))

    loop.train(TrainConfig(h5=str(args.h5), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr))
    mark("train() returned")
    print("\nstart-up timeline, seconds since the process started")
    previous = 0.0
    for what, t in sorted(marks, key=lambda m: m[1]):
        if what in ("epoch", ""):
            continue
        print(f"{t:8.2f}  (+{t - previous:6.2f})  {what}")
        previous = t


if __name__ == "__main__":
    main()
