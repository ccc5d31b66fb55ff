"""Frames from images, image folders and videos, one at a time (a video is decoded as it is read, never held
whole): what `predict` and `select` read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glint_track.data.pack import MAX_IMAGE_PIXELS, Unusable, open_gray
from glint_track.errors import GlintTrackError
from glint_track.files import IMAGE_SUFFIXES

#: Video files decoded frame by frame (with the `video` extra: PyAV).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class Frame:
    name: str  # the image file, or `video.mp4#<frame index>`
    gray: np.ndarray  # H×W uint8, the original size
    sequence: str  # what it is a frame of: its video, or its image's folder
    index: int | None = None  # its frame number in its video


def frame_stem(name: str) -> str:
    """What the files written for a frame are named after: its image's stem, or `<video or HDF5 stem>_<frame:06d>`
    for a frame of a video or an HDF5 file (whose Frame.name is `path#index`)."""
    path, _, index = name.partition("#")
    return f"{Path(path).stem}_{int(index):06d}" if index else Path(path).stem


def sources(inputs: list[str]) -> list[Path]:
    """The images and videos named, and those directly inside the folders named, in order."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in suffixes)
        elif item.is_file():
            files.append(item)
        else:
            raise GlintTrackError(f"{item}: no such image, video or folder; pass image or video files, or folders")
    if not files:
        raise GlintTrackError(f"no images or videos ({', '.join(suffixes)}) in {', '.join(inputs)}")
    return files


def frames(files: list[Path]) -> Iterator[Frame]:
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(path)
            continue
        try:
            yield Frame(str(path), open_gray(path), str(path.parent))
        except Unusable as e:
            raise GlintTrackError(f"{path}: {e}; remove it or convert it to PNG") from e
        except Exception as e:  # noqa: BLE001 - PIL's decoders raise many kinds on bad bytes
            raise GlintTrackError(f"{path}: not a readable image ({e}); remove it or convert it to PNG") from e


def frame_count(files: list[Path]) -> int | None:
    """How many frames `files` hold, for the progress bar (None when a video does not say)."""
    total = 0
    for path in files:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            total += 1
            continue
        with _open_video(path) as container:
            count = container.streams.video[0].frames if container.streams.video else 0
        if not count:
            return None
        total += count
    return total


def _open_video(path: Path):  # noqa: ANN202 - PyAV's container type is only known once it is imported
    try:
        import av
    except ImportError as e:
        raise GlintTrackError(f"{path}: reading videos needs PyAV; `pip install 'glint-track[video]'`") from e
    try:
        return av.open(str(path))
    except av.FFmpegError as e:
        raise GlintTrackError(f"{path}: not a readable video ({e}); convert it to MP4 or to PNG frames") from e


def _video_frames(path: Path) -> Iterator[Frame]:
    import av

    decoded = 0
    with _open_video(path) as container:
        if not container.streams.video:
            raise GlintTrackError(f"{path}: holds no video stream; pass a video or image files")
        stream = container.streams.video[0]
        if stream.width * stream.height > MAX_IMAGE_PIXELS:
            raise GlintTrackError(
                f"{path}: its frames are {stream.width}×{stream.height}, over the {MAX_IMAGE_PIXELS:,} pixels "
                "accepted; crop or scale the video"
            )
        try:
            for frame in container.decode(video=0):
                yield Frame(f"{path}#{decoded}", frame.to_ndarray(format="gray"), str(path), decoded)
                decoded += 1
        except av.FFmpegError as e:
            raise GlintTrackError(
                f"{path}: decoding failed after {decoded} frames ({e}); convert it to MP4 or to PNG frames"
            ) from e
