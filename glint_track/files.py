"""Files: writing them so that a reader only ever sees the old version or the complete new one, their digests,
and which ones are images."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Image files pack and predict read (a labelme imagePath without a suffix tries them in this order).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """A temporary path beside `dst` to write to; renamed onto `dst` when the block succeeds, removed
    when it fails (a crash leaves at worst a hidden `.name.*.tmp`, never a half-written `dst`)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def first_line(error: BaseException) -> str:
    """An exception's first line, or its type when it has no message (for one-line errors)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def os_reason(error: BaseException) -> str:
    """Why a write failed, in the operating system's words where the error (or one it arose from) has them:
    torch.save, for one, turns "No space left on device" into a RuntimeError about zip positions."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return first_line(error)
