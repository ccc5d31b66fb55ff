"""DDP under torchrun (gloo on the CPU), across two "nodes" too, and sweeps as MLflow child runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import TINY, latest_checkpoint
from mlflow.tracking import MlflowClient
from torch.nn.parallel import DistributedDataParallel

from glint_track.cli import main
from glint_track.constants import OUTPUT_STRIDE
from glint_track.data.batches import epoch_indices, make_batches, split_indices
from glint_track.data.glint_file import load_glint_file
from glint_track.engine import Precision
from glint_track.glints import GlintMetrics, ground_truth
from glint_track.training.distributed import Distributed
from glint_track.training.epoch import validate
from glint_track.training.losses import GlintLoss


def test_ddp_shards_cover_the_epoch_once_in_equal_parts() -> None:
    indices = torch.arange(100, 123)  # 23 samples over 2 ranks: 11 each, one left out (another one next epoch)
    shards = [epoch_indices(indices, True, seed=1, epoch=3, shard=(r, 2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 11
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    left_out = set()
    for epoch in range(1, 6):
        seen = torch.cat([epoch_indices(indices, True, seed=1, epoch=epoch, shard=(r, 2)) for r in range(2)])
        missing = set(indices.tolist()) - set(seen.tolist())
        assert len(missing) == 1
        left_out |= missing
    assert len(left_out) > 1


class _Brightness(torch.nn.Module):
    """A stand-in model that finds bright spots, identity-blind: counts, errors and swaps all non-trivial."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels, self.gain = channels, torch.nn.Parameter(torch.tensor(30.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.max_pool2d(x, OUTPUT_STRIDE) * self.gain - 24).expand(-1, self.channels, -1, -1)


def _validation(h5: str, ddp: Distributed) -> dict[str, float]:
    """validate() of this rank's share of the split, merged over the ranks."""
    data, cpu = load_glint_file(h5, None), torch.device("cpu")
    _, val_idx = split_indices(data.num_samples, 0.22, 42)  # 7 samples: shards of 4 and 3
    truth = ground_truth(data.points, data.present, data.heatmaps)
    model = _Brightness(data.num_glints)
    rank, world = ddp.shard
    batches = make_batches(
        data, val_idx[rank::world], 3, shuffle=False, seed=0, device=cpu, num_workers=0, resident=True
    )
    return validate(
        DistributedDataParallel(model) if ddp.enabled else model,
        batches,
        GlintLoss("peak-bce"),
        Precision.resolve("fp32", cpu, channels_last=False),
        GlintMetrics(data.num_glints),
        truth,
        0.3,
        desc="val",
        reduce=ddp.sum if ddp.enabled else None,
        gather=ddp.gather_rows,
    )


def _rank(rank: int, port: int, h5: str, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2"}
    ddp = Distributed.from_env(torch.device("cpu"))
    torch.save(_validation(h5, ddp), f"{out}.{rank}")
    ddp.close(finished=True)


def test_validation_sharded_over_ranks_gives_exactly_the_single_process_metrics(tiny_h5: Path, tmp_path: Path) -> None:
    alone = _validation(str(tiny_h5), Distributed())
    torch.multiprocessing.spawn(_rank, args=(_free_port(), str(tiny_h5), str(tmp_path / "r")), nprocs=2)
    merged = [torch.load(tmp_path / f"r.{rank}") for rank in range(2)]
    assert merged[0] == merged[1]  # every rank reports the same
    assert 0 < alone["recall"] < 1 and alone["swap_rate"] > 0 and alone["loc_err_median"] > 0
    for name, value in alone.items():
        assert merged[0][name] == pytest.approx(value, rel=1e-6), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_make_one_run_that_resumes_in_one_process(tiny_h5: Path, tmp_path: Path) -> None:
    """Two machines as users launch them (README, "Several GPUs"): one torchrun per node, c10d rendezvous,
    gloo; here both "nodes" on loopback, one process each."""
    port = _free_port()
    rendezvous = (
        f"--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:{port} --rdzv-id t".split()
    )
    train = ["-m", "glint_track", "train", "--h5", str(tiny_h5), *TINY, "--epochs", "2"]
    logs = [(tmp_path / f"node{n}.out", tmp_path / f"node{n}.err") for n in range(2)]
    command, nodes = [sys.executable, "-m", "torch.distributed.run", *rendezvous, *train], []
    for out, err in logs:
        with open(out, "w") as o, open(err, "w") as e:
            nodes.append(subprocess.Popen(command, stdout=o, stderr=e))
    for node, (_, err) in zip(nodes, logs):
        assert node.wait(timeout=600) == 0, err.read_text()[-3000:]
    stdout, stderr = ("".join(path.read_text() for path in paths) for paths in zip(*logs))
    assert stdout.count("finished 2 epochs") == 1  # global rank 0 alone reports
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["world_size"] == "2" and run.data.params["global_batch_size"] == "16"
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert "× 2 ranks" in stderr
    checkpoint, _ = latest_checkpoint(run.info.run_id)
    assert checkpoint["epoch"] == 2 and not any(k.startswith("module.") for k in checkpoint["model_state_dict"])

    resumed = CliRunner().invoke(main, ["train", "--resume", run.info.run_id, "--epochs", "3"])
    assert resumed.exit_code == 0, resumed.output
    run = mlflow.get_run(run.info.run_id)
    assert run.data.tags["glint_track.override.world_size"] == "1 from epoch 3"
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]


def _children(parent: str) -> dict[str, mlflow.entities.Run]:
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent}'", output_format="list"
    )
    return {r.info.run_name: r for r in runs}


def _parent(output: str) -> str:
    return next(line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("Sweep "))


def test_sweep_runs_children_under_a_parent_and_resume_skips_finished_ones(tiny_h5: Path) -> None:
    args = [
        "sweep",
        "--h5",
        str(tiny_h5),
        "--loss",
        "focal,bce",
        "--lr",
        "1e-3",
        "--parallel",
        "2",
        "--epochs",
        "2",
        "--no-save-optimizer",
        *TINY,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    parent = _parent(result.output)
    children = _children(parent)
    assert set(children) == {"loss=focal lr=1e-3", "loss=bce lr=1e-3"}
    for child in children.values():
        assert child.info.status == "FINISHED" and child.data.params["save_optimizer"] == "False"
        checkpoint, _ = latest_checkpoint(child.info.run_id)
        assert "optimizer_state_dict" not in checkpoint
    summary = mlflow.artifacts.load_dict(f"{mlflow.get_run(parent).info.artifact_uri}/summary.json")
    assert {row["loss"] for row in summary} == {"focal", "bce"} and all("val_loss" in row for row in summary)
    tags = mlflow.get_run(parent).data.tags
    best = min(summary, key=lambda row: row["val_loss"])
    assert tags["glint_track.sweep.best_run"] == best["run_id"] and mlflow.get_run(parent).info.status == "FINISHED"

    # a child interrupted after its last checkpoint: --resume finishes it and leaves the other alone
    bce, focal = children["loss=bce lr=1e-3"], children["loss=focal lr=1e-3"]
    MlflowClient().set_terminated(bce.info.run_id, "KILLED")
    resumed = CliRunner().invoke(main, ["sweep", "--resume", parent])
    assert resumed.exit_code == 0, resumed.output
    assert "finished already" in resumed.stderr and "loss=focal" in resumed.stderr
    after = _children(parent)
    assert after["loss=bce lr=1e-3"].info.status == "FINISHED"
    assert after["loss=focal lr=1e-3"].info.end_time == focal.info.end_time  # not run again
    assert len(after) == 2


def test_a_failed_child_does_not_stop_the_others_and_the_parent_reports_it(tiny_h5: Path) -> None:
    result = CliRunner().invoke(
        main, ["sweep", "--h5", str(tiny_h5), "--lr", "1e-3,-1", "--parallel", "2", "--epochs", "1", *TINY]
    )
    assert result.exit_code == 1
    parent = _parent(result.output)
    children = _children(parent)
    assert children["lr=1e-3"].info.status == "FINISHED"
    assert children["lr=-1"].info.status == "FAILED"
    assert "--lr must be a positive number" in children["lr=-1"].data.tags["glint_track.sweep.error"]
    run = mlflow.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags["glint_track.sweep.failed"] == "1"
    assert f"glint-track sweep --resume {parent}" in result.stderr
