"""`glint-track export`: the UNet and its glint decoder as one ONNX graph, for trackers outside Python (ONNX Runtime,
TensorRT, C++ pipelines).

Input `images`: uint8 N×H×W, any N, H and W multiples of 16 (the graph scales to 0…1 itself). Outputs: `heatmaps`
N×C×H/4×W/4 glint probabilities; `xy` N×C×2, each glint's sub-pixel peak in input pixels (`glints.decode`);
`score` N×C, its peak probability; `present` N×C, score ≥ the threshold the file's metadata records.
Needs the `onnx` extra (`pip install glint-track[onnx]`: onnx and onnxscript write it, onnxruntime checks it).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from glint_track.constants import DEFAULT_THRESHOLD, OUTPUT_STRIDE, SIZE_MULTIPLE
from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path
from glint_track.glints import decode
from glint_track.model import GlintUNet

log = logging.getLogger(__name__)

INPUT = "images"
OUTPUTS = ("heatmaps", "xy", "score", "present")
#: The name of the ONNX file inside a logged MLflow model.
MODEL_FILE = "model.onnx"
OPSET = 18


class DeployedGlints(nn.Module):
    """What a tracker calls: raw uint8 frames in, heat-maps and decoded glints out."""

    def __init__(self, model: GlintUNet, threshold: float) -> None:
        super().__init__()
        self.model = model
        self.threshold = threshold

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(images.unsqueeze(1).float() / 255.0)
        glints = decode(logits, self.threshold)
        return torch.sigmoid(logits), glints.xy, glints.score, glints.present


@dataclass
class Check:
    """How far ONNX Runtime's outputs are from PyTorch's on the same frames."""

    shape: tuple[int, ...]
    heatmap_diff: float  # max |Δ| of the probabilities
    xy_diff_px: float  # max |Δ| of a glint coordinate where both say present
    compared: int  # glints both say present
    present_agree: float  # share of glints both call present or both absent

    def line(self) -> str:
        n, h, w = self.shape
        return (
            f"{n}×{h}×{w}: heat-maps max |Δ| {self.heatmap_diff:.1e}, positions of the {self.compared} glints "
            f"found max |Δ| {self.xy_diff_px:.1e} px, presence agrees on {100 * self.present_agree:.1f} %"
        )


def require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise GlintTrackError(
            f"ONNX export needs {', '.join(missing)}; install them with `pip install 'glint-track[onnx]'`"
        )


def write_onnx(model: GlintUNet, out: Path, image_size: tuple[int, int], threshold: float = DEFAULT_THRESHOLD) -> None:
    """Export with dynamic batch, height and width (traced at `image_size`) to `out`."""
    require_onnx()
    h, w = image_size
    batch, h16, w16 = (torch.export.Dim(name, min=1, max=4096) for name in ("batch", "h16", "w16"))
    example = torch.zeros(2, h, w, dtype=torch.uint8)
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="glint-track-onnx-") as tmp:
        program = torch.onnx.export(
            DeployedGlints(model, threshold).eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes={"images": {0: batch, 1: SIZE_MULTIPLE * h16, 2: SIZE_MULTIPLE * w16}},
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
        program.model.metadata_props.update(
            {
                "glint_track.glints": ",".join(f"g{c + 1}" for c in range(model.num_glints)),
                "glint_track.threshold": str(threshold),
                "glint_track.output_stride": str(OUTPUT_STRIDE),
                "glint_track.trained_size": f"{h}x{w}",
            }
        )
        staged = Path(tmp) / MODEL_FILE  # the exporter names files after their suffix; `out` may be a temp name
        program.save(staged)
        out.write_bytes(staged.read_bytes())


def check_onnx(path: Path, model: GlintUNet, batches: list[np.ndarray]) -> list[Check]:
    """Run the file in ONNX Runtime and the model in PyTorch on the same uint8 batches (N×H×W each)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    deployed = DeployedGlints(model, DEFAULT_THRESHOLD).eval()
    checks = []
    for frames in batches:
        ours = session.run(list(OUTPUTS), {INPUT: frames})
        with torch.no_grad():
            ref = [t.numpy() for t in deployed(torch.from_numpy(frames))]
        both = ours[3] & ref[3]
        xy_diff = float(np.abs(ours[1] - ref[1])[both].max()) if both.any() else 0.0
        heatmap_diff = float(np.abs(ours[0] - ref[0]).max())
        checks.append(Check(frames.shape, heatmap_diff, xy_diff, int(both.sum()), float((ours[3] == ref[3]).mean())))
    return checks


@dataclass
class Exported:
    path: Path
    checks: list[Check]
    model_id: str | None  # the MLflow model the file was added to (None: a file, or a run without a model)


#: Synthetic eye images the export is checked on (at the trained size, and one at half its height).
CHECK_FRAMES = 4
#: How far ONNX Runtime may be from PyTorch before an export is refused (fp32 rounding is ~1e-7 and ~1e-5 px).
MAX_HEATMAP_DIFF = 1e-3
MAX_XY_DIFF_PX = 0.01


def export(model_ref: str, out: Path, threshold: float = DEFAULT_THRESHOLD, attach: bool = True) -> Exported:
    """Export the model `model_ref` names, check it against PyTorch on synthetic eye images, and with `attach`
    add the file to the MLflow model it came from (so a registered version carries it)."""
    from mlflow.tracking import MlflowClient

    from glint_track.data.synth import example_frames
    from glint_track.tracking.fetch import fetch_checkpoint
    from glint_track.tracking.local_store import check_local_store
    from glint_track.tracking.logged_model import model_id_of
    from glint_track.tracking.server import require_local_store

    if out.suffix.lower() != ".onnx":
        raise GlintTrackError(f"--out {out}: use a file name ending in .onnx")
    require_onnx()
    if not Path(model_ref).is_file():
        require_local_store()  # before MLflow is asked: it would create an empty store
        if attach:  # before the export: the file is added to the run's model afterwards
            check_local_store(", or pass --no-attach to write the .onnx file alone")
    client = MlflowClient()
    model_id = model_id_of(client, model_ref)
    source = fetch_checkpoint(f"models:/{model_id}" if model_id else model_ref, prefer_best=True, option="--model")
    model = GlintUNet.from_checkpoint(source.checkpoint, model_ref)
    h, w = source.checkpoint.get("model_info", {}).get("image_size") or (128, 128)
    frames = example_frames(CHECK_FRAMES, (h, w), model.num_glints)
    smaller = frames[:1, : max(SIZE_MULTIPLE, h // 2 // SIZE_MULTIPLE * SIZE_MULTIPLE), :]
    with atomic_path(out) as staged:  # `out` appears only once the graph is checked
        write_onnx(model, staged, (h, w), threshold)
        checks = check_onnx(staged, model, [frames, smaller])
        for check in checks:
            if check.heatmap_diff > MAX_HEATMAP_DIFF or check.xy_diff_px > MAX_XY_DIFF_PX:
                raise GlintTrackError(
                    f"the exported graph does not reproduce PyTorch on {check.line()}; {out} was not written "
                    "(please report it with the torch and onnxscript versions)"
                )
    if attach and model_id is not None:
        with tempfile.TemporaryDirectory(prefix="glint-track-onnx-") as tmp:
            named = Path(tmp) / MODEL_FILE
            named.write_bytes(out.read_bytes())
            client.log_model_artifact(model_id, str(named))
    elif attach and model_ref.strip() and not Path(model_ref).is_file():
        log.warning("%s has no logged MLflow model to add the ONNX file to; it is only at %s", model_ref, out)
    return Exported(out, checks, model_id if attach else None)
