"""Data-parallel training on torchrun: `torchrun --nproc-per-node N -m vae_deploy train RECIPE`.

torchrun starts N copies of `vae-deploy train` with WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT set; `World.from_env()` reads them (no variables, or WORLD_SIZE 1: one ordinary process and
nothing here changes the trainer's numbers). With N > 1 the trainer:

- initialises torch.distributed (`init`: gloo on CPU, nccl on CUDA, where each rank takes cuda:LOCAL_RANK)
  with a timeout, so a rank that never arrives is an error, not a hang;
- builds its task with the GLOBAL batch (`global_train_config`: the recipe's batch_size is per rank, the
  global batch is batch_size x N) so that every rank sees the same global batches in the same order as one
  process at the global batch would (all ranks draw the same random numbers from the same seed);
- reads only its contiguous rows of each global batch, in rank order (`World.rows`): the task draws the
  random numbers of the whole global batch (shuffle order, clip windows, crops, flips), so every rank's
  generator stays in step, but cuts, generates and moves to the device only this rank's samples (MNIST
  images, Moving MNIST sequences, video clips; the decoded videos themselves are the pool every rank's
  random windows come from, so each rank holds them all); `shard` checks the rows;
- runs the loss inside DistributedDataParallel (`LossModule`, `wrap`), which averages gradients over
  ranks. The seed's step is `loss_sum / batch`; `scaled_loss` makes each rank's loss
  `loss_sum_rank * N / global_batch`, so the average over ranks is exactly `loss_sum_global / global_batch`
  (also for an uneven last batch);
- draws the sampling noise of the whole global batch on every rank and keeps its own rows
  (models/noise.py `global_batch_rows`, around each rank's loss): rank r's sample i gets the same eps as
  sample i of the one-process run, and every rank's RNG stays in step. Together: N ranks at per-rank
  batch B end with the parameters of one process at batch N x B, up to float rounding
  (tests/training/test_distributed.py);
- writes checkpoints, metrics and plots on rank 0 only (`World.is_main`).

Validation runs whole on every rank (the same numbers everywhere, so every rank agrees on the best epoch
and draws the same noise). A failing rank exits non-zero; torchrun then ends the others.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from vae_deploy.errors import ConfigError
from vae_deploy.models.noise import global_batch_rows

TIMEOUT_VARIABLE = "VAE_DEPLOY_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 600.0  # long enough for rank 0 to write a checkpoint while the others wait


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """The torchrun variables; one process when they are absent."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from err
        if size < 1 or not 0 <= rank < size:
            raise ConfigError(f"RANK {rank} does not fit WORLD_SIZE {size}")
        if size > 1 and not os.environ.get("MASTER_ADDR"):
            raise ConfigError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT: start the ranks with "
                              "torchrun")
        return cls(size, rank, local_rank)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """The rank that writes the run folder and prints progress."""
        return self.rank == 0

    def rows(self, total: int) -> range:
        """This rank's contiguous rows of a global batch of `total`, in rank order (torch.tensor_split's
        sizes: the first total % N ranks take one row more); all of them for one process."""
        if not self.distributed:
            return range(total)
        base, extra = divmod(total, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def record(self, batch_size: int) -> dict[str, int]:
        """What a distributed run adds to its metrics and checkpoint config; nothing for one process."""
        if not self.distributed:
            return {}
        return {"world_size": self.size, "batch_per_rank": batch_size, "global_batch": batch_size * self.size}


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each rank of a CUDA run takes its own GPU, cuda:LOCAL_RANK."""
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def init(world: World, device: torch.device) -> None:
    """Join the process group (once per process)."""
    if not world.distributed or torch.distributed.is_initialized():
        return
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=timeout)


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def global_train_config(train: Any, world: World) -> Any:
    """The recipe's TrainConfig with batch_size = the global batch (the task batches the global batch)."""
    if not world.distributed:
        return train
    return dataclasses.replace(train, batch_size=train.batch_size * world.size)


def check_task(num_train: int, global_batch: int, world: World) -> None:
    """Every rank needs at least one sample of every global batch, the last one included."""
    if not world.distributed:
        return
    last = num_train % global_batch
    if num_train < world.size or 0 < last < world.size:
        raise ConfigError(f"{world.size} ranks cannot share this data: an epoch of {num_train} samples in "
                          f"global batches of {global_batch} ends with a batch of {last or num_train}, fewer "
                          f"than one sample per rank; use fewer processes or change the batch size or data")


def shard(batch: torch.Tensor, global_n: int, world: World) -> tuple[torch.Tensor, int]:
    """(this rank's rows of a global batch of `global_n`, their offset). A task that reads only this rank's
    rows (Task.train_batches with `rows`) yields them already; one that yields the whole batch is cut here."""
    rows = world.rows(global_n)
    n = int(batch.shape[0])
    if n == global_n and len(rows) < global_n:
        return batch[rows.start:rows.stop], rows.start
    if n != len(rows):
        raise RuntimeError(f"rank {world.rank}: the task gave {n} rows of a global batch of {global_n}, "
                           f"expected {len(rows)} (rows {rows.start}..{rows.stop - 1})")
    return batch, rows.start


def scaled_loss(total: torch.Tensor, global_n: int, world: World) -> torch.Tensor:
    """The loss to backpropagate: the seed's `total / batch` for one process; `total * N / global batch`
    for N ranks, whose DDP average is the one-process gradient."""
    if not world.distributed:
        return total / global_n
    return total * (world.size / global_n)


class LossModule(nn.Module):
    """The task's loss as a module, so that DistributedDataParallel sees the whole step as one forward
    (also for tasks whose loss calls the model's step form instead of forward)."""

    def __init__(self, task: Any, model: nn.Module):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: torch.Tensor, offset: int, global_n: int):
        if int(batch.shape[0]) == global_n:
            return self.task.loss(self.model, batch)
        with global_batch_rows(offset, int(batch.shape[0]), global_n):
            return self.task.loss(self.model, batch)


def wrap(task: Any, model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module the training step calls: LossModule, in DistributedDataParallel for N ranks."""
    module = LossModule(task, model)
    if not world.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def sum_over_ranks(sums: torch.Tensor | None, samples: int, world: World) -> tuple[torch.Tensor | None, int]:
    """An epoch's loss sums and sample count over all ranks (the metrics of the global batches)."""
    if not world.distributed or sums is None:
        return sums, samples
    sums = sums.clone()
    count = torch.tensor([float(samples)], dtype=torch.float64, device=sums.device)
    torch.distributed.all_reduce(sums)
    torch.distributed.all_reduce(count)
    return sums, int(count.item())


def rank0_value(value: float, world: World, device: torch.device) -> float:
    """Rank 0's value on every rank: decisions read from each rank's clock (train.max_minutes: stop the
    epoch, how far along the lr cosine) must be the same everywhere, or the ranks would fall out of step."""
    if not world.distributed:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())
