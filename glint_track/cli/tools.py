"""`glint-track evaluate`, `predict` and `export`: parse options and call the library (the data commands: data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from glint_track.cli.options import D, Size, threshold_option
from glint_track.constants import (
    BACKENDS,
    SIZE_MULTIPLE,
)


@click.command("evaluate")
@click.option(
    "--model",
    "model_ref",
    required=True,
    help="A run ID (its best_model.pth), runs:/<id>/<path>, models:/<name>/<version>, or a checkpoint file (the "
    "research script's too).",
)
@click.option(
    "--h5", required=True, type=click.Path(dir_okay=False), help="Glint HDF5 file to evaluate on (every sample)."
)
@threshold_option("a glint counts as detected")
@click.option(
    "--match-radius",
    type=click.FloatRange(0, 1e4, min_open=True),
    default=D.match_radius,
    show_default=True,
    help="Input pixels within which a detected glint matches its annotation.",
)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option(
    "--log/--no-log",
    "log_run",
    default=False,
    show_default=True,
    help="Record the evaluation as an MLflow run tagged with the model's run.",
)
@click.option("--experiment", default=D.experiment, show_default=True, help="MLflow experiment of the --log run.")
def evaluate_cmd(
    model_ref: str,
    h5: str,
    threshold: float,
    match_radius: float,
    batch_size: int,
    device: str,
    as_json: bool,
    log_run: bool,
    experiment: str,
) -> None:
    """Detection precision/recall/F1, localisation error and identity swaps of a trained model, per glint.

    \b
    Examples:
      glint-track evaluate --model 5308fe93de8b4c3f9a278246725680ea --h5 test.h5
      glint-track evaluate --model old_run/best_model.pth --h5 test.h5 --json
    """
    from glint_track.inference.evaluate import evaluate, log_evaluation
    from glint_track.tracking.server import check_tracking_server

    check_tracking_server()
    result = evaluate(model_ref, h5, threshold, match_radius, batch_size, device)
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else result.table())
    if log_run:
        click.echo(f"logged as MLflow run {log_evaluation(result, experiment, threshold, match_radius)}", err=as_json)


@click.command("predict")
@click.option(
    "--model",
    "model_ref",
    required=True,
    help="A run ID (its best_model.pth), a models:/ or runs:/<id>/<path> URI, a checkpoint file, or with "
    "--backend onnx an .onnx file.",
)
@click.argument("inputs", nargs=-1)
@click.option(
    "--images",
    multiple=True,
    type=click.Path(exists=True),
    help="A folder of frames, an image or a video (repeatable; the same as naming them after the options).",
)
@click.option("--out", type=click.Path(dir_okay=False), help="preds.csv or preds.json: one row per frame and glint.")
@click.option(
    "--labelme-out",
    type=click.Path(file_okay=False),
    help="Pre-label for labelme: each frame's glints as a labelme JSON (the shape `pack` reads; a glint below "
    "--threshold left out) beside a copy of its image, and to_review.csv, the frames least confident first.",
)
@click.option(
    "--overwrite/--no-overwrite",
    default=False,
    show_default=True,
    help="Replace labelme JSON already in --labelme-out (else refused: it may hold corrections).",
)
@click.option(
    "--radius",
    type=click.FloatRange(0, min_open=True),
    help="The labelme circles' radius in the frames' pixels [default: 1.25 model-input pixels, the packer's narrowest "
    "heat-map; pass your glints' annotated radius if larger].",
)
@click.option(
    "--overlay-dir", type=click.Path(file_okay=False), help="Also write each frame with its numbered glints drawn."
)
@click.option(
    "--coco-out",
    type=click.Path(dir_okay=False),
    help="Also write the glints as one COCO keypoints .json (pre-labels for CVAT or Label Studio; `pack --coco` "
    "reads it back): put it in the images' folder to name them relative to it.",
)
@threshold_option("a glint is reported present")
@click.option(
    "--input-size", type=Size(), help="Model input H[xW] [default: the training images' size from the checkpoint]."
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="torch",
    show_default=True,
    envvar="GLINT_TRACK_BACKEND",
    help="torch, or onnx: ONNX Runtime on the exported graph (the model's model.onnx, else exported now); the same "
    "rows either way.",
)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True, help="Frames per call.")
@click.option(
    "--window",
    type=click.IntRange(SIZE_MULTIPLE),
    help="Real-time mode for videos and image sequences: each frame on its own, on a square of this side (model-input "
    "pixels, a multiple of 16) around the previous frame's glints; the whole frame when they were lost. About half "
    "the frame's side: 128 for 256² frames (larger finds positions closer to the whole frame's, and is slower).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def predict_cmd(
    model_ref: str,
    inputs: tuple[str, ...],
    images: tuple[str, ...],
    out: str | None,
    labelme_out: str | None,
    overwrite: bool,
    radius: float | None,
    overlay_dir: str | None,
    coco_out: str | None,
    threshold: float,
    input_size: tuple[int, int] | None,
    backend: str,
    batch_size: int,
    window: int | None,
    device: str,
) -> None:
    """Glint coordinates (in each frame's own pixels) for images, folders of images and videos (with the `video`
    extra), of any size; rows are written as frames are decoded.

    \b
    Examples:
      glint-track predict --model 5308fe93de8b4c3f9a278246725680ea frames/ --out preds.csv --overlay-dir overlays/
      glint-track predict --model glints.onnx --backend onnx session.mp4 --out preds.csv --window 128
      glint-track predict --model best_model.pth eye1.png eye2.png --out preds.json
      glint-track predict --model 5308fe93de8b4c3f9a278246725680ea --images new_frames/ --labelme-out to_correct/
      glint-track predict --model 5308fe93de8b4c3f9a278246725680ea new_frames/ --coco-out new_frames/prelabels.json
    """
    from glint_track.inference.labelme import PrelabelFolder
    from glint_track.inference.predict import predict

    if not inputs + images:
        raise click.UsageError("name the frames: folders, images or videos after the options, or --images FOLDER")
    labelme = PrelabelFolder(Path(labelme_out), model_ref, threshold, overwrite, radius) if labelme_out else None
    done = predict(
        model_ref,
        [*images, *inputs],
        Path(out) if out else None,
        Path(overlay_dir) if overlay_dir else None,
        threshold,
        input_size,
        device,
        backend,
        batch_size,
        window,
        labelme,
        Path(coco_out) if coco_out else None,
    )
    written = " and ".join(str(p) for p in (out, coco_out) if p)
    click.echo(f"{done.glints} glints found in {done.frames} frames" + (f" → {written}" if written else ""))
    if done.review is not None:
        click.echo(f"pre-labels for labelme in {labelme_out}; correct them in the order of {done.review}")


@click.command("export")
@click.option(
    "--model",
    "model_ref",
    required=True,
    help="A run ID (its MLflow model), a models:/ URI, a runs:/<id>/<path> URI, or a checkpoint file.",
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The .onnx file to write.")
@threshold_option("the graph's `present` output says a glint is there")
@click.option(
    "--attach/--no-attach",
    default=True,
    show_default=True,
    help="Also add the file to the MLflow model it came from (run ID or models:/), so a registered version carries it.",
)
def export_cmd(model_ref: str, out: str, threshold: float, attach: bool) -> None:
    """The model and its glint decoder as one ONNX graph: uint8 frames N×H×W in (any N, H and W multiples of 16),
    heat-maps, glint positions, scores and presence out. Checked against PyTorch before it is kept.

    \b
    Examples:
      glint-track export --model 5308fe93de8b4c3f9a278246725680ea --out glints.onnx
      glint-track export --model best_model.pth --out glints.onnx
    """
    from glint_track.inference.export import MODEL_FILE, export
    from glint_track.tracking.server import check_tracking_server

    check_tracking_server()
    result = export(model_ref, Path(out), threshold, attach)
    click.echo(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB)")
    for check in result.checks:
        click.echo(f"  ONNX Runtime vs PyTorch on {check.line()}")
    if result.model_id is not None:
        click.echo(f"  added to MLflow model {result.model_id} as {MODEL_FILE}")
