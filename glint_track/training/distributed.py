"""Multi-process training under `torchrun` (DistributedDataParallel): who this process is, and the few
collective operations the training loop needs.

`torchrun --nproc-per-node N -m glint_track train …` starts N copies of the trainer with RANK,
LOCAL_RANK and WORLD_SIZE set. Every rank trains on its share of each epoch (data.epoch_indices); rank
0 alone talks to MLflow and writes checkpoints, which hold the unwrapped model's state, so a checkpoint
written with N ranks resumes with any number.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from glint_track.errors import GlintTrackError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """Join the process group torchrun set up (NCCL on GPUs, gloo on the CPU); a plain run is rank 0 of 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        this = cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
        if device.type == "cuda":
            torch.cuda.set_device(this.local_rank)
        else:  # N processes on one CPU: share its cores instead of each taking all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
        return this

    def device(self, device: torch.device) -> torch.device:
        """Each rank's own GPU: cuda:LOCAL_RANK (a DDP run on the GPU ignores --device's index)."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over all ranks (in place; a no-op in a plain run)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of `tensor`, concatenated in rank order (ranks may hold different numbers of rows);
        `tensor` itself in a plain run."""
        if not self.enabled:
            return tensor
        rows = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.zeros_like(rows) for _ in range(self.world_size)]
        dist.all_gather(sizes, rows)
        counts = [int(size.item()) for size in sizes]
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @property
    def agree(self) -> Callable[[bool], bool] | None:
        """What combines a stop flag over the ranks (`any`), or None in a plain run: nothing to agree on."""
        return self.any if self.enabled else None

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (a stop request reaching the ranks at different steps)."""
        if not self.enabled:
            return flag
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self, finished: bool) -> None:
        """Leave the process group. After a run every rank finished, wait for all of them first: rank 0 hosts the
        rendezvous store, and a rank still tearing down its connections when the others have gone can abort
        (seen once in CI: SIGABRT in rank 1 at the end of a gloo test). After a failure, another rank may never
        arrive, so nobody waits."""
        if self.enabled and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def launch_torchrun(gpus: list[int], argv: list[str]) -> None:
    """Replace this process with `torchrun --nproc-per-node len(gpus) -m glint_track <argv>` on those GPUs."""
    if not torch.cuda.is_available():
        raise GlintTrackError(
            "--gpus needs CUDA GPUs and none is available here; use torchrun with gloo on the CPU, or drop --gpus"
        )
    missing = [g for g in gpus if g >= torch.cuda.device_count()]
    if missing:
        raise GlintTrackError(
            f"--gpus {','.join(map(str, gpus))}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0"
        )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={len(gpus)}",
        "-m",
        "glint_track",
        *argv,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)
