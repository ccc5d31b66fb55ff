"""Files: writing them so that a reader only ever sees the old version or the complete new one, their digests,
and which ones are images."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from glint_track.errors import GlintTrackError

#: Image files pack and predict read (a labelme imagePath without a suffix tries them in this order).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: The process's umask, read once at import (reading it means setting it, which is not thread-safe later).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """A temporary path beside `dst` to write to; renamed onto `dst` when the block succeeds, removed
    when it fails (a crash leaves at worst a hidden `.name.*.tmp`, never a half-written `dst`)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as a file opened for writing would be, not mkstemp's owner-only 0600
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


#: The largest annotation file read (a labelme JSON with its image embedded is a few MB).
MAX_ANNOTATION_BYTES = 256 * 2**20


def unreadable_reason(path: Path, root: Path, max_bytes: int = MAX_ANNOTATION_BYTES) -> str | None:
    """Why a file found under `root` (a folder from someone else) is not read, or None: it must be a regular file,
    reached inside `root` (a link may point elsewhere in it, not out of it), of at most `max_bytes`. Checked on the
    file's metadata, so a FIFO that would block a read, a device, or a link to a file elsewhere is never opened."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop on older Pythons
        return f"cannot be opened ({getattr(e, 'strerror', None) or first_line(e)})"
    if not target.is_relative_to(root):
        return "is a link to a file outside the input folder, which is not read"
    if problem := not_a_file(target):
        return f"{problem}, which is not read"
    if target.stat().st_size > max_bytes:
        return f"is larger than the {max_bytes // 2**20} MB an annotation may be"
    return None


def check_writable(folder: Path) -> None:
    """Raise the OSError that writing a file in `folder` meets (a temporary one, removed at once): permissions,
    a read-only or full disk, a path through a file."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".glint-track-write-test-"):
        pass


def printable(text: Path | str) -> str:
    """Text (a file name, a message holding one) as one line of plain text: control characters (a newline, an ANSI
    escape) and bytes that are not UTF-8 escaped as Python writes them, so a crafted name cannot forge or colour
    lines."""
    return "".join(c if c.isprintable() and not 0xDC80 <= ord(c) <= 0xDCFF else ascii(c)[1:-1] for c in str(text))


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a data file, or None: missing, a folder, a link that leads nowhere (or in a
    loop), or not a regular file (a pipe would block a read for ever, a device never end)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if os.path.lexists(path):
            return f"is a link that leads nowhere ({e.strerror or first_line(e)})"
        return "no such file" if e.errno in (errno.ENOENT, errno.ENOTDIR) else f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe or a device)"
    return None


def refuse_replacing(out: Path, option: str, ours: Callable[[Path], bool], what: str) -> None:
    """An output may replace only a file this command wrote before (`ours` recognises it by its content): an input,
    someone's annotations or a data set at that path is refused in one line, before anything runs."""
    if not (out.exists() or out.is_symlink()):
        return
    if problem := not_a_file(out):
        raise GlintTrackError(f"{option} {out}: it {problem}; choose another path")
    if not ours(out):
        raise GlintTrackError(
            f"{option} {out}: the file exists and is not {what}, so it is not replaced; choose another path, or move "
            "it away first"
        )


def starts_with(path: Path, *prefixes: bytes) -> bool:
    """The file's first bytes are one of `prefixes` (what a format writes first)."""
    with open(path, "rb") as f:
        head = f.read(max(map(len, prefixes)))
    return any(head.startswith(p) for p in prefixes)


def refuse_writing_into(folder: Path, option: str, inputs: list[Path]) -> None:
    """A folder of outputs named after the inputs (overlays, pre-labels) that holds an input would write over it."""
    target = folder.resolve()
    for path in inputs:
        if path.resolve().parent == target:
            raise GlintTrackError(
                f"{option} {folder} holds the input {path}, which would be written over; choose another folder"
            )
