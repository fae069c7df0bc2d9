"""The Task base class and the task registry (the built-in tasks import these from here, not from the
package, so that the package can import them in turn without a circle)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vae_deploy.errors import ConfigError


class Task:
    """Base class. Subclasses set `kind` and `config_cls` and implement the methods that raise here."""

    kind: ClassVar[str]
    config_cls: ClassVar[type]

    def __init__(self, config: Any, train: Any, device: torch.device):
        """`config` is the task's data config, `train` the recipe's TrainConfig (batch size, kl weight)."""
        self.config = config
        self.train_config = train
        self.device = device

    @property
    def num_train(self) -> int:
        """Training samples per epoch."""
        raise NotImplementedError

    @classmethod
    def train_samples(cls, config: Any) -> int | None:
        """`num_train` of the task `config` would build, found without building it (no model, no tensors,
        nothing decoded), or None when only building the task tells. The --nproc launcher's preflight
        (jobs.preflight) reads it to refuse more ranks than the data allows before it starts any rank; it
        raises what building the task would raise for the data it reads."""
        return None

    def steps_per_epoch(self) -> int:
        batch = self.train_config.batch_size
        return (self.num_train + batch - 1) // batch

    def batch_sizes(self) -> list[int]:
        """The size of every training batch of an epoch, in order (the last one may be smaller)."""
        batch = self.train_config.batch_size
        return [min(batch, self.num_train - start) for start in range(0, self.num_train, batch)]

    def train_batches(self, generator: torch.Generator,
                      rows: Callable[[int], range] | None = None) -> Iterator[Any]:
        """One epoch of shuffled training batches of `batch_sizes()`; all shuffling draws from `generator`
        (its state is checkpointed, so a resumed run sees the same order). With `rows` (a data-parallel
        rank's World.rows), each batch is only rows(batch size) of that batch: the random numbers of the
        whole batch are drawn all the same (every rank's generator stays in step) but only these samples are
        read or made."""
        raise NotImplementedError

    def in_order(self, data: torch.Tensor) -> Iterator[torch.Tensor]:
        """`data` in consecutive batches of the recipe's batch size (validation and test order)."""
        batch = self.train_config.batch_size
        for start in range(0, data.shape[0], batch):
            yield data[start:start + batch]

    def valid_batches(self) -> Iterator[Any]:
        """Validation batches in a fixed order (chooses the best epoch)."""
        raise NotImplementedError

    def test_batches(self) -> Iterator[Any]:
        """Test batches in a fixed order (what `evaluate` reports)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(total summed over the batch, {"recon": .., "kl": ..} summed, number of samples)."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        """Raise ConfigError when the model cannot take this task's data."""

    def write_pictures(self, model: nn.Module, out_dir: Path, seed: int) -> dict[str, Path]:
        """Draw the task's evaluation pictures into out_dir; return {name: path}."""
        return {}

    def evaluate_extra(self, model: nn.Module, out_dir: Path, seed: int) -> tuple[dict[str, Any],
                                                                                  dict[str, Path]]:
        """Evaluation beyond the test loss (e.g. PSNR/SSIM of whole videos): (report entries, {name: path})
        for `evaluate`'s report. Entries must not reuse the report's own keys."""
        return {}, {}


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make `cls` available as recipe `[data] kind = cls.kind`."""
    TASKS[cls.kind] = cls
    return cls


def get_task(kind: str) -> type[Task]:
    try:
        return TASKS[kind]
    except KeyError as err:
        raise ConfigError(f"unknown data kind {kind!r} (known: {', '.join(sorted(TASKS))})") from err


def build_task(kind: str, config: Any, train: Any, device: torch.device) -> Task:
    return get_task(kind)(config, train, device)
