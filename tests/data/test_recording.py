"""`synth --recording`: one person's eye in time order, with truth — fixations that hold still, saccades that
move every glint together, blinks that hide them — as HDF5 and as a video, for what works on sequences."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
from conftest import run_cli

from glint_track.inference.doubt import jumps


def _rows(points: np.ndarray) -> list[dict[str, object]]:
    return [
        {"glint": f"g{c + 1}", "x": float(x), "y": float(y), "present": bool(np.isfinite(x))}
        for c, (x, y) in enumerate(points)
    ]


def test_a_recording_holds_still_in_fixations_moves_together_in_saccades_and_blinks() -> None:
    result = run_cli("synth", "--out", "rec.h5", "--recording", "6", "--size", "64", "--video", "rec.mp4")
    assert result.exit_code == 0 and "180 frames" in result.output, result.output
    with h5py.File("rec.h5") as f:
        points, images = f["points"][:], f["images"][:]
        events, fps = json.loads(f.attrs["events"]), f.attrs["recording_fps"]
    assert fps == 30 and len(points) == 180 and {e[0] for e in events} >= {"fixation", "saccade"}
    frame_event = {i: name for name, first, last in events for i in range(first, last + 1)}
    with warnings.catch_warnings():  # frames with every glint behind the lid have no move: NaN, said once here
        warnings.simplefilter("ignore", RuntimeWarning)
        moved = np.nanmax(np.linalg.norm(np.diff(points, axis=0), axis=2), axis=1)  # the farthest glint's move
    still = [moved[i] for i in range(179) if frame_event[i] == frame_event[i + 1] == "fixation"]
    saccades = [moved[i] for i in range(179) if frame_event[i + 1] == "saccade" and frame_event[i] != "blink"]
    assert np.nanmedian(still) < 0.3 < np.nanmedian(saccades), (np.nanmedian(still), np.nanmedian(saccades))
    missing = np.isnan(points[..., 0]).sum(1)
    blinks = [(first, last) for name, first, last in events if name == "blink" and last - first >= 3]  # whole ones
    assert blinks and all(missing[first : last + 1].max() >= 6 for first, last in blinks)  # the lid hides them
    assert missing[[i for i, e in frame_event.items() if e == "fixation"]].mean() < 1
    # every glint moves with the others: on the truth, nothing jumps; one glint put 6 px off does
    assert not any(jumps(_rows(points[i]), _rows(points[i + 1])) for i in range(179))
    wrong = points[40].copy()
    wrong[2] += 6.0
    assert jumps(_rows(points[39]), _rows(wrong))[0].startswith("g3 jumped")
    import av

    with av.open("rec.mp4") as container:
        decoded = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    assert len(decoded) == 180 and np.abs(np.stack(decoded).astype(int) - images).mean() < 3
