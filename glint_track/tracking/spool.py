"""A local journal of tracking calls that could not reach the MLflow server, sent in order once it is back.

Training never waits for the tracking server. When a call fails because the server is unreachable,
that call and every later one are written here instead (files hard-linked or copied in, since the
originals are replaced every epoch) until a replay gets through. What is still here when training
ends is sent by `glint-track sync SPOOL`.

Layout: `spool.json` (run ID, tracking URI) and per call `NNNNNN.json` (operation and arguments) with
the file it uploads, if any, in `NNNNNN/`. An entry is removed as soon as the server has it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path

META = "spool.json"


@dataclass
class Entry:
    seq: int
    op: str
    args: dict[str, Any]
    file: Path | None  # the file an `artifact`/`model` call uploads, kept under its artifact name


class Spool:
    def __init__(self, directory: Path, run_id: str, tracking_uri: str) -> None:
        self.directory = directory
        self.run_id = run_id
        self.tracking_uri = tracking_uri

    @classmethod
    def create(cls, directory: Path, run_id: str, tracking_uri: str) -> Spool:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / META) as tmp:
            tmp.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
        return cls(directory, run_id, tracking_uri)

    @classmethod
    def open(cls, directory: Path) -> Spool:
        try:
            meta = json.loads((Path(directory) / META).read_text())
        except (OSError, ValueError) as e:
            raise GlintTrackError(
                f"{directory}: not a glint-track spool (no readable {META}); pass the spool folder a training run named"
            ) from e
        return cls(Path(directory), meta["run_id"], meta["tracking_uri"])

    def entries(self) -> list[Entry]:
        out = []
        for path in sorted(self.directory.glob("[0-9]*.json")):
            record = json.loads(path.read_text())
            payload = self.directory / path.stem
            out.append(
                Entry(
                    int(path.stem), record["op"], record["args"], payload / record["file"] if record["file"] else None
                )
            )
        return out

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("[0-9]*.json"))

    def append(self, op: str, args: dict[str, Any], file: Path | None = None) -> None:
        """Journal one call. A newer upload of the same artifact replaces an older pending one: only the
        last version of latest_checkpoint.pth needs to reach the server."""
        existing = self.entries()
        seq = existing[-1].seq + 1 if existing else 1
        name = None
        if file is not None:
            name = args.get("name") or file.name
            payload = self.directory / f"{seq:06d}"
            payload.mkdir(exist_ok=True)
            try:
                os.link(
                    file, payload / name
                )  # the original is replaced (not rewritten) later: the link keeps this version
            except OSError:
                shutil.copyfile(file, payload / name)
        with atomic_path(self.directory / f"{seq:06d}.json") as tmp:
            tmp.write_text(json.dumps({"op": op, "args": args, "file": name}))
        if op == "artifact":
            for old in existing:
                if old.op == "artifact" and old.args == args and old.file is not None and old.file.name == name:
                    self.remove(old)

    def remove(self, entry: Entry) -> None:
        (self.directory / f"{entry.seq:06d}.json").unlink(missing_ok=True)
        shutil.rmtree(self.directory / f"{entry.seq:06d}", ignore_errors=True)

    def replay(self, send: Callable[[str, dict[str, Any], Path | None], None]) -> int:
        """Send every entry in order, removing each once sent; stops at (and re-raises) the first failure."""
        sent = 0
        for entry in self.entries():
            send(entry.op, entry.args, entry.file)
            self.remove(entry)
            sent += 1
        return sent
