"""How fast the deployed detector answers: latency per call (p50/p99) and frames per second, uint8 frames in,
glints out, for PyTorch eager, torch.compile, ONNX Runtime (fp32, and int8 quantised on calibration frames) on this
machine's CPU, and ONNX Runtime CUDA / TensorRT where a GPU and those providers are there.

    python benchmarks/latency.py --model <run id | checkpoint> [--sizes 128,256] [--batches 1,32] [--iters 200]
                                 [--window 128,160] [--h5 labelled.h5]

Each configuration is timed call by call after a warm-up, in this one process (one thing runs at a time). The
positions each backend finds are compared with PyTorch fp32's on synthetic eye images (max and mean |Δ| over the
glints both call present: max, 99th percentile and mean |Δ|). The table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glint_track.constants import DEFAULT_THRESHOLD  # noqa: E402
from glint_track.data.synth import example_frames  # noqa: E402
from glint_track.inference.export import INPUT, DeployedGlints, write_onnx  # noqa: E402
from glint_track.inference.predict import glints_centre, window_corner  # noqa: E402
from glint_track.model import GlintUNet  # noqa: E402

Found = tuple[np.ndarray, np.ndarray]  # (xy, score) of a batch of frames
Run = Callable[[np.ndarray], Found]  # frames → what they hold


class _Fp16(torch.nn.Module):
    """The network under fp16 autocast, its logits back in fp32: the sub-pixel decoder runs in fp32."""

    def __init__(self, model: GlintUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, torch.float16):
            return self.model(images).float()


def torch_runner(
    model: GlintUNet, compiled: bool, device: str = "cpu", half: bool = False, graphs: bool = False
) -> Run:
    """uint8 frames from the host in, positions back on the host: on a GPU the copies both ways count. `half`
    runs the network in fp16, `graphs` compiles with CUDA graphs (mode="reduce-overhead")."""
    model = copy.deepcopy(model)  # moved to `device` here; the other rows keep theirs
    deployed = DeployedGlints(_Fp16(model) if half else model, DEFAULT_THRESHOLD).eval().to(device)
    call = deployed
    if compiled:
        call = torch.compile(deployed, dynamic=False, mode="reduce-overhead" if graphs else None)

    def run(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            _, xy, score, _ = call(torch.from_numpy(frames).to(device))
            return xy.cpu().numpy(), score.cpu().numpy()

    return run


def onnx_runner(path: Path, providers: list[str]) -> Run:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)

    def run(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy, score = session.run(["xy", "score"], {INPUT: frames})
        return xy, score

    return run


def quantise(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    """Static int8 (QDQ, per-channel weights) with activation ranges from `calibration` frames."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{INPUT: frame[None]} for frame in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepared = out.with_suffix(".pre.onnx")
    with contextlib.chdir(out.parent):  # ONNX Runtime's quantiser leaves temporary files in the working directory
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "ConvTranspose"],
        )
    return out


def time_calls(run: Run, frames: np.ndarray, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run(frames)
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        run(frames)
        seconds.append(time.perf_counter() - start)
    return seconds


def agreement(found: Found, reference: Found) -> tuple[float, float, float]:
    """(max, 99th percentile, mean) |Δ| in px of the glint positions both call present, against the reference."""
    (xy, score), (ref_xy, ref_score) = found, reference
    both = (score >= DEFAULT_THRESHOLD) & (ref_score >= DEFAULT_THRESHOLD)
    if not both.any():
        return float("nan"), float("nan"), float("nan")
    distance = np.linalg.norm(xy - ref_xy, axis=-1)[both]
    return float(distance.max()), float(np.percentile(distance, 99)), float(distance.mean())


def windowed(run: Run, reference: Found, frames: np.ndarray, window: int) -> tuple[Run, np.ndarray]:
    """`run` on the window×window square around each frame's glints (as `predict --window` places it from the
    frame before; here from the reference's glints in the same frame, the frame's middle where predict would run
    the whole frame), and those windows."""
    xy, score = reference
    h, w = frames.shape[1:]
    centres = (glints_centre(points, scores, DEFAULT_THRESHOLD) for points, scores in zip(xy, score))
    corners = [window_corner(centre or (w / 2, h / 2), window, (h, w)) for centre in centres]
    crops = np.stack([f[top : top + window, left : left + window] for f, (top, left) in zip(frames, corners)])
    offsets = np.array([(left, top) for top, left in corners], np.float32)[:, None, :]

    def placed(batch: np.ndarray) -> Found:  # the crops of `frames`, back in frame pixels
        found_xy, found_score = run(crops[: len(batch)])
        return found_xy + offsets[: len(batch)], found_score

    return placed, crops


def truth_error(found: Found, truth: np.ndarray) -> str:
    """Mean distance (px) to the annotated glints it finds, and how many of them it finds."""
    xy, score = found
    annotated = ~np.isnan(truth[..., 0])
    hit = annotated & (score >= DEFAULT_THRESHOLD)
    mean = np.linalg.norm(xy - truth, axis=-1)[hit].mean() if hit.any() else float("nan")
    return f"{mean:.3f} ({hit.sum()}/{annotated.sum()})"


def quality(found: Found, reference: Found, truth: np.ndarray | None) -> tuple[float, float, float, str]:
    """A row's agreement with the reference and, where the frames are annotated, its error against that."""
    return (*agreement(found, reference), truth_error(found, truth) if truth is not None else "")


def load_model(ref: str | None) -> GlintUNet:
    if ref is None:
        return GlintUNet().eval()
    from glint_track.tracking.fetch import fetch_checkpoint

    return GlintUNet.from_checkpoint(fetch_checkpoint(ref, prefer_best=True, option="--model").checkpoint, ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="run ID or checkpoint (default: an untrained UNet: timing only)")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--only", help="comma-separated backends (default: all available)")
    ap.add_argument("--window", default="96", help="also time `predict --window` squares of these sides (0: none)")
    ap.add_argument("--h5", type=Path, help="a labelled file: its images of the same size also score each row's error")
    args = ap.parse_args()
    model = load_model(args.model)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    windows = [int(w) for w in args.window.split(",") if int(w)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="glint-latency-") as tmp:
        for size in sizes:
            frames, truth = test_frames(args.h5, size, max(batches), model.num_glints)
            fp32 = Path(tmp) / f"fp32_{size}.onnx"
            write_onnx(model, fp32, (size, size))
            runners = backends(model, fp32, Path(tmp) / f"int8_{size}.onnx", size, args.only)
            reference = runners["torch eager"](frames)  # what every row's positions are compared with
            for name, run in runners.items():
                whole = quality(run(frames), reference, truth)
                for batch in batches:
                    calls = np.array(time_calls(run, frames[:batch], args.iters, args.warmup))
                    rows.append((name, f"{size}²", batch, calls, *whole))
                    print(f"{name} {size}² batch {batch}: p50 {1e3 * np.median(calls):.2f} ms", flush=True)
                for window in (w for w in windows if w < size):
                    placed, crops = windowed(run, reference, frames, window)
                    in_window = quality(placed(frames), reference, truth)
                    calls = np.array(time_calls(run, crops[:1], args.iters, args.warmup))
                    rows.append((name, f"{window}² window in {size}²", 1, calls, *in_window))
    print_table(rows, args)


def test_frames(h5: Path | None, size: int, count: int, num_glints: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first frames (and their annotated glints) of `h5` when its images are size², else synthetic ones."""
    if h5 is not None:
        from glint_track.data.glint_file import load_glint_file

        data = load_glint_file(h5)
        if data.images.shape[1:] == (size, size) and data.points is not None:
            count = max(count, min(len(data.images), 128))
            return data.images[:count].numpy(), data.points[:count].numpy()
    return example_frames(count, (size, size), num_glints, seed=1), None


def backends(model: GlintUNet, fp32: Path, int8: Path, size: int, only: str | None) -> dict[str, Run]:
    import onnxruntime

    wanted = set(only.split(",")) if only else None
    makers: dict[str, Callable[[], Run]] = {
        "torch eager": lambda: torch_runner(model, compiled=False),
        "torch.compile": lambda: torch_runner(model, compiled=True),
        "onnxruntime cpu fp32": lambda: onnx_runner(fp32, ["CPUExecutionProvider"]),
        "onnxruntime cpu int8": lambda: onnx_runner(
            quantise(fp32, int8, example_frames(32, (size, size), model.num_glints, seed=2)), ["CPUExecutionProvider"]
        ),
    }
    if torch.cuda.is_available():
        makers |= {
            "torch cuda fp32": lambda: torch_runner(model, compiled=False, device="cuda"),
            "torch cuda fp16": lambda: torch_runner(model, compiled=False, device="cuda", half=True),
            "torch.compile cuda fp16 + CUDA graphs": lambda: torch_runner(
                model, compiled=True, device="cuda", half=True, graphs=True
            ),
        }
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        makers["onnxruntime cuda fp32"] = lambda: onnx_runner(fp32, ["CUDAExecutionProvider"])
    if "TensorrtExecutionProvider" in available:
        makers["onnxruntime tensorrt"] = lambda: onnx_runner(fp32, ["TensorrtExecutionProvider"])
    names = ["torch eager"] + [n for n in makers if n != "torch eager" and (wanted is None or n in wanted)]
    return {name: makers[name]() for name in names}


def print_table(rows: list, args: argparse.Namespace) -> None:
    cpu = platform.processor() or platform.machine()
    print(
        f"\n{dt.date.today()} · {cpu}, {os.cpu_count()} cores · torch {torch.__version__} · "
        f"onnxruntime {__import__('onnxruntime').__version__} · model {args.model or 'untrained UNet'} · "
        f"{args.iters} calls after {args.warmup} warm-up"
    )
    print(
        "| backend | size | batch | p50 ms / call | p99 ms / call | ms / frame (p50) | frames/s "
        "| Δ px vs eager max / p99 / mean | error px vs annotation (found) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, batch, calls, err_max, err_p99, err_mean, truth_err in rows:
        p50, p99 = np.percentile(calls, [50, 99]) * 1e3
        print(
            f"| {name} | {size} | {batch} | {p50:.2f} | {p99:.2f} | {p50 / batch:.2f} | "
            f"{batch / calls.mean():,.0f} | {err_max:.3f} / {err_p99:.3f} / {err_mean:.4f} | {truth_err} |"
        )


if __name__ == "__main__":
    main()
