"""What runs the model for `predict`: PyTorch, or ONNX Runtime on the exported graph (inference/export.py).

Both take uint8 frames N×H×W and return each glint's position (N×C×2, input pixels) and peak probability (N×C);
the same decoder computes both (in the ONNX graph, exported from `glints.decode`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from glint_track.constants import SIZE_MULTIPLE
from glint_track.data.pack import MAX_IMAGE_PIXELS
from glint_track.engine import resolve_device
from glint_track.errors import GlintTrackError
from glint_track.files import first_line
from glint_track.glints import decode
from glint_track.model import GlintUNet

log = logging.getLogger(__name__)


class Detector(Protocol):
    num_glints: int
    trained_size: tuple[int, int] | None

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TorchDetector:
    model: GlintUNet
    device: torch.device
    trained_size: tuple[int, int] | None

    @property
    def num_glints(self) -> int:
        return self.model.num_glints

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(frames).to(self.device)[:, None].float().div_(255.0)
        with torch.no_grad():
            glints = decode(self.model(x))
        return glints.xy.cpu().numpy(), glints.score.cpu().numpy()


class OnnxDetector:
    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime

        from glint_track.inference.export import INPUT

        wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
        providers = [p for p in wanted if p in onnxruntime.get_available_providers()] + ["CPUExecutionProvider"]
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
            meta = self.session.get_modelmeta().custom_metadata_map
            size = meta.get("glint_track.trained_size")
            self.trained_size = tuple(int(v) for v in size.split("x", 1)) if size else None
            h, w = self.trained_size or (SIZE_MULTIPLE, SIZE_MULTIPLE)
            if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or not 0 < h * w <= MAX_IMAGE_PIXELS:
                raise ValueError(f"its trained size {size} is not two multiples of {SIZE_MULTIPLE} within an image")
            self.num_glints = len(meta["glint_track.glints"].split(","))
            if [i.name for i in self.session.get_inputs()] != [INPUT]:
                raise ValueError(f"its inputs are not [{INPUT!r}]")
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own kinds on a bad file
            raise GlintTrackError(
                f"{path}: not a glint-track ONNX model ({first_line(e)[:200]}); make one with `glint-track export`"
            ) from e
        self.input = INPUT

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy, score = self.session.run(["xy", "score"], {self.input: np.ascontiguousarray(frames)})
        return xy, score


def open_detector(model_ref: str, backend: str, device_name: str) -> Detector:
    """The model `model_ref` names (a run ID, models:/ or runs:/ URI, a checkpoint, or for onnx an .onnx file),
    ready to run with `backend`. For onnx, the MLflow model's own model.onnx when `glint-track export` added one,
    else an export made now."""
    from glint_track.tracking.fetch import fetch_checkpoint

    device = resolve_device(device_name)
    if backend == "onnx":
        from glint_track.inference.export import require_onnx

        require_onnx()
        if model_ref.lower().endswith(".onnx") and Path(model_ref).is_file():
            return OnnxDetector(Path(model_ref), device)
        with tempfile.TemporaryDirectory(prefix="glint-track-onnx-") as tmp:  # read whole into the session
            return OnnxDetector(_onnx_file_of(model_ref, Path(tmp)), device)
    if model_ref.lower().endswith(".onnx"):
        raise GlintTrackError(f"--model {model_ref} is an ONNX file; run it with --backend onnx")
    source = fetch_checkpoint(model_ref, prefer_best=True, option="--model")
    model = GlintUNet.from_checkpoint(source.checkpoint, model_ref).to(device)
    size = source.checkpoint.get("model_info", {}).get("image_size")
    return TorchDetector(model, device, tuple(size) if size else None)


def _onnx_file_of(model_ref: str, folder: Path) -> Path:
    import mlflow
    from mlflow.tracking import MlflowClient

    from glint_track.inference.export import MODEL_FILE, export
    from glint_track.tracking.logged_model import model_id_of

    client = MlflowClient()
    model_id = model_id_of(client, model_ref)
    if model_id is not None:
        if MODEL_FILE in {a.path for a in client.list_logged_model_artifacts(model_id)}:
            location = client.get_logged_model(model_id).artifact_location.rstrip("/")
            return Path(mlflow.artifacts.download_artifacts(f"{location}/{MODEL_FILE}", dst_path=str(folder)))
        log.info("model %s has no %s yet (glint-track export adds it); exporting it now", model_id, MODEL_FILE)
    return export(model_ref, folder / MODEL_FILE, attach=False).path
