"""`glint-track pack`, `inspect` and `synth`: parse options and call the data library."""

from __future__ import annotations

from pathlib import Path

import click

from glint_track.cli.options import Size, threshold_option
from glint_track.constants import (
    COMPRESSIONS,
    MAX_SIDE,
    OUTPUT_STRIDE,
    SENSOR_BITS,
    SIGMA_MIN,
    SIGMA_SCALE,
    SIZE_MULTIPLE,
)
from glint_track.errors import GlintTrackError

#: synth may take this share of the memory free now (images, heat-maps and the raw frames are held at once).
SYNTH_MEMORY_SHARE = 0.5


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


@click.command("pack")
@click.option("--in-dir", type=click.Path(file_okay=False), help="Folder of labelme .json files (and their images).")
@click.option(
    "--coco",
    type=click.Path(dir_okay=False),
    help="Instead: a COCO keypoints .json (CVAT, Label Studio), keypoints named g1..gN, its images in its folder.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), required=True, help="HDF5 file to write (appears only when complete)."
)
@click.option(
    "--num-glints", type=click.IntRange(1, 64), default=8, show_default=True, help="Glint channels: labels g1..gN."
)
@click.option("--prefix", default="g", show_default=True, help="Label prefix before the 1-based glint number.")
@click.option(
    "--sigma-scale",
    type=click.FloatRange(0, 100),
    default=SIGMA_SCALE,
    show_default=True,
    help="Gaussian sigma = max(sigma-min, radius × sigma-scale).",
)
@click.option("--sigma-min", type=click.FloatRange(0, 100, min_open=True), default=SIGMA_MIN, show_default=True)
@click.option("--img-size", type=Size(), help="Resize images to H[xW] (default: the first image's size).")
@click.option(
    "--hm-size",
    type=Size(),
    help=f"Heat-map size h[xw] (default and only accepted value: image size / {OUTPUT_STRIDE}).",
)
@click.option("--recursive/--no-recursive", default=False, show_default=True, help="Also read subfolders.")
@click.option(
    "--groups/--no-groups",
    default=True,
    show_default=True,
    help="With --recursive, record each frame's first sub-folder (one per participant or session: labels/p07/…) as "
    "its group: train then validates on whole groups it did not learn from.",
)
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="gzip", show_default=True)
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="For frames pre-labelled by `predict --labelme-out`: write, per frame and glint, how far the annotator moved "
    "the model's point, and which glints were added or deleted (CSV).",
)
@click.option(
    "--log-corrections/--no-log-corrections",
    default=True,
    show_default=True,
    help="Log those corrections to the MLflow run whose model pre-labelled the frames (field_* metrics).",
)
def pack_cmd(
    in_dir: str | None,
    coco: str | None,
    out: str,
    num_glints: int,
    prefix: str,
    sigma_scale: float,
    sigma_min: float,
    img_size: tuple[int, int] | None,
    hm_size: tuple[int, int] | None,
    recursive: bool,
    groups: bool,
    compression: str,
    report: str | None,
    log_corrections: bool,
) -> None:
    """Pack labelme glint annotations (circles g1..gN), or a COCO keypoints file, into a training HDF5 file.
    Frames a model pre-labelled (`predict --labelme-out`) also say how far the annotator moved its points: the
    model's error on new frames.

    \b
    Examples:
      glint-track pack --in-dir annotations/ --out train_256.h5 --img-size 256
      glint-track pack --in-dir labels/ --recursive --out lab.h5         # labels/<participant>/*.json
      glint-track pack --in-dir to_correct/ --out round2.h5 --report corrections.csv
      glint-track pack --coco cvat_export/person_keypoints_default.json --out lab.h5
    """
    if (in_dir is None) == (coco is None):
        raise click.UsageError("pass --in-dir (a labelme folder) or --coco (a COCO keypoints file), one of them")
    from glint_track.data.glint_file import written_by_glint_track
    from glint_track.files import refuse_replacing

    refuse_replacing(Path(out), "--out", written_by_glint_track, "a data file glint-track wrote")
    if coco is not None:
        from glint_track.data.coco import pack_coco

        summary = pack_coco(coco, out, num_glints, prefix, sigma_scale, sigma_min, img_size, compression)
    else:
        from glint_track.data.pack import pack_labelme

        summary = pack_labelme(
            in_dir, out, num_glints, prefix, sigma_scale, sigma_min, img_size, hm_size, recursive, compression, groups
        )
    skipped = f", skipped {len(summary.skipped)} file(s) (see warnings)" if summary.skipped else ""
    grouped = f" from {summary.groups} groups (sub-folders)" if summary.groups else ""
    click.echo(f"packed {summary.packed} samples{grouped} with {summary.glints} glints into {summary.out}{skipped}")
    corrections = summary.corrections
    if corrections is None:
        if report:
            click.echo(f"no frame in {in_dir} was pre-labelled by `glint-track predict --labelme-out`: no report")
        return
    click.echo(corrections.line())
    if report:
        corrections.write_csv(Path(report))
        click.echo(f"per glint: {report}")
    if log_corrections:
        from glint_track.tracking.field import log_field_report

        for line in log_field_report(corrections, Path(in_dir)):
            click.echo(line)


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--preview", type=click.Path(dir_okay=False), help="Write a PNG grid of samples with the glints drawn and numbered."
)
@click.option("--count", type=click.IntRange(1, 256), default=16, show_default=True, help="Samples in the preview.")
def inspect_cmd(file: str, preview: str | None, count: int) -> None:
    """Summarise a glint HDF5 file and check that the trainer accepts it.

    \b
    Example:
      glint-track inspect train_256.h5 --preview train_256.png
    """
    from glint_track.data.inspect import describe, format_summary
    from glint_track.data.inspect import preview as draw_preview

    data, summary = describe(file)
    click.echo(format_summary(summary))
    if preview:
        click.echo(f"preview: {draw_preview(data, preview, count)}")


@click.command("synth")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HDF5 file to write.")
@click.option("--num-samples", type=click.IntRange(1), default=512, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(SIZE_MULTIPLE, MAX_SIDE),
    default=128,
    show_default=True,
    help=f"Image side in pixels (multiple of {SIZE_MULTIPLE}).",
)
@click.option(
    "--difficulty",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="0: gaze within ±12°, open lids, glasses reflections in 1 image of 10, little blur; 1: gaze to ±32°, lids "
    "up to 60 % closed, glasses reflections in 6 of 10, defocus and motion blur (≤ 3 px at 128²).",
)
@click.option("--num-glints", type=click.IntRange(1, 32), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--labelme-dir", type=click.Path(file_okay=False), help="Also write each image as PNG with its labelme JSON here."
)
@click.option(
    "--bits",
    type=click.Choice([str(b) for b in SENSOR_BITS]),
    default="8",
    show_default=True,
    help="The sensor's bit depth: the labelme PNGs keep it (16-bit PNGs above 8); the HDF5 file holds 8 bits.",
)
@click.option(
    "--participants",
    type=click.IntRange(0, 10_000),
    default=0,
    show_default=True,
    help="Simulate this many people, each with their own cornea, headset fit and LED ring, their frames one after "
    "another (groups p01, p02, … in the file; labelme sub-folders): train then holds whole people out for "
    "validation. 0: every frame someone new.",
)
@click.option(
    "--recording",
    type=click.FloatRange(0.1, 600),
    help="Instead of separate frames: a recording of this many seconds of one person (fixations, saccades, blinks), "
    "its frames in time order with their truth (--num-samples and --participants do not apply).",
)
@click.option("--fps", type=click.IntRange(1, 1000), default=30, show_default=True, help="The recording's frame rate.")
@click.option("--video", type=click.Path(dir_okay=False), help="Also write the recording as this MP4 (needs PyAV).")
def synth_cmd(
    out: str,
    num_samples: int,
    size: int,
    difficulty: float,
    num_glints: int,
    seed: int,
    labelme_dir: str | None,
    bits: str,
    participants: int,
    recording: float | None,
    fps: int,
    video: str | None,
) -> None:
    """Write built-in demo data: synthetic eye images with labelled glints, or a short recording of one person.

    \b
    Examples:
      glint-track synth --out demo.h5 && glint-track train --h5 demo.h5
      glint-track synth --out lab.h5 --num-samples 96 --participants 6     # 6 people: validated on unseen ones
      glint-track synth --out rec.h5 --recording 10 --video rec.mp4        # 300 frames at 30 fps, with truth
    """
    from glint_track.data.synth import write_synthetic

    if video and not recording:
        raise GlintTrackError("--video writes a recording: add --recording SECONDS")
    if recording:
        num_samples, participants = max(1, round(recording * fps)), 0
    if size % SIZE_MULTIPLE:
        fix = size // SIZE_MULTIPLE * SIZE_MULTIPLE or SIZE_MULTIPLE
        raise GlintTrackError(
            f"--size {size} is not a multiple of {SIZE_MULTIPLE}, which the UNet needs; use e.g. {fix}"
        )
    needed = num_samples * (size * size * (3 if int(bits) > 8 else 2) + num_glints * (size // OUTPUT_STRIDE) ** 2 * 6)
    if needed > SYNTH_MEMORY_SHARE * available_memory():
        raise GlintTrackError(
            f"--num-samples {num_samples} of --size {size} need {needed / 2**30:.1f} GiB of memory while they are "
            f"written, more than this machine has free; use fewer samples or a smaller size"
        )
    if participants > num_samples:
        raise GlintTrackError(f"--participants {participants} is more than --num-samples {num_samples}; use fewer")
    from glint_track.data.glint_file import written_by_glint_track
    from glint_track.files import refuse_replacing

    refuse_replacing(Path(out), "--out", written_by_glint_track, "a data file glint-track wrote")
    if recording:
        from glint_track.data.recording import write_recording

        clip = Path(video) if video else None
        if clip is not None and (clip.exists() or clip.is_symlink()):
            raise GlintTrackError(f"--video {clip} exists; choose another path, or move it away first")
        n = write_recording(Path(out), recording, fps, size, num_glints, seed, difficulty, int(bits), clip)
        click.echo(f"wrote a {recording:g} s recording at {fps} fps ({n} frames of {size}×{size}) to {out}")
        return
    path = write_synthetic(
        out, num_samples, size, num_glints, seed, labelme_dir, difficulty, int(bits), participants=participants
    )
    people = f" of {participants} participants" if participants else ""
    click.echo(f"wrote {num_samples} synthetic {size}×{size} samples{people} with {num_glints} glints to {path}")


@click.command("select")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="A new folder for the frames to label (labelme opens it).",
)
@click.option("--count", "-k", type=click.IntRange(1, 4096), default=64, show_default=True, help="Frames to choose.")
@click.option(
    "--labelled",
    multiple=True,
    type=click.Path(exists=True),
    help="A folder (or HDF5 file) of frames labelled already: they and their near-copies are not chosen. Repeatable.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling and clustering seed.")
@click.option(
    "--model",
    help="A trained model (run ID, models:/ URI or checkpoint): up to half the frames are those it doubts most "
    "(glints missing, low scores, out of the LEDs' order, or jumping in a video), each written with its pre-labels.",
)
@threshold_option("the model reports a glint present")
@click.option("--device", default="auto", show_default=True, help="With --model: auto, cpu, cuda or cuda:N.")
def select_cmd(
    inputs: tuple[str, ...],
    out: str,
    count: int,
    labelled: tuple[str, ...],
    seed: int,
    model: str | None,
    threshold: float,
    device: str,
) -> None:
    """Choose the frames to label first from videos, image folders or glint HDF5 files: spread over how the eye
    looks (k-means over small normalised thumbnails, as DeepLabCut extracts frames), never two near-copies, never
    a frame already labelled. Images are copied as they are (bit depth kept); video and HDF5 frames become PNGs.
    selected.csv in --out says where each came from.

    \b
    Examples:
      glint-track select session1.mp4 session2.mp4 --out to_label/ -k 64
      glint-track select frames/ --out round2/ -k 32 --labelled to_label/
      glint-track select session3.mp4 --out round3/ -k 32 --labelled to_label/ --model 5308fe93de8b4c3f9a278246725680ea
    """
    from glint_track.data.select import select_frames

    guide = None
    if model:
        from glint_track.inference.doubt import ModelGuide

        guide = ModelGuide(model, threshold, device)
    done = select_frames(list(inputs), Path(out), count, list(labelled), seed, guide)
    click.echo(f"chose {len(done.picks)} of {done.frames} frames → {out}; where each came from: {done.listing}")
    if len(done.picks) < count:
        click.echo(f"only {len(done.picks)} frames differ enough from each other and from the labelled ones", err=True)
