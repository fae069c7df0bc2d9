"""Training recipes: a TOML file with three tables, each checked key by key (unknown keys are refused).

    [model]  kind = "mlp" + that model kind's config (vae_deploy.models.registry)
    [data]   kind = "mnist" + that task's data config (vae_deploy.training.tasks)
    [train]  TrainConfig below

Relative paths inside a recipe (data_dir) are relative to the current directory, like the seed's
'MNIST_DATA/'.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_deploy.config_io import from_dict, read_toml, to_dict
from vae_deploy.errors import ConfigError
from vae_deploy.models.registry import get_kind
from vae_deploy.training.tasks import get_task


@dataclass
class TrainConfig:
    epochs: int = 100  # the seed's 100 epochs
    batch_size: int = 128  # samples per optimizer step, as the seed (an epoch's last batch may be smaller)
    lr: float = 1e-3  # Adam learning rate, as the seed
    lr_final: float | None = None  # set: the lr follows a cosine from lr down to lr_final over all the
    # epochs' steps (cosine annealing, Loshchilov & Hutter, SGDR, 2017); None = constant lr, as the seed
    seed: int = 0  # seeds torch: initial weights, shuffling and the sampling noise
    max_steps: int | None = None  # stop after this many optimizer steps in all (smoke runs); None = no limit
    device: str = "auto"  # "auto" = cuda when available, else cpu; or any torch device string
    kl_weight: float = 1.0  # weight of the KL term (1 = the seed's plain ELBO)
    fused_adam: bool = False  # one fused Adam kernel: faster, but rounding differs from the seed's Adam, so a
    # run no longer retraces the seed script step for step (statistically the same training)
    threads: int | None = None  # CPU threads for torch; None = torch's default. Small models on a busy
    # machine often run faster with 1 (threads spin against each other)
    max_minutes: float | None = None  # wall-clock budget of one `train` invocation: when it is spent, the
    # current epoch ends early (validated and saved like any other) and training stops; None = no limit.
    # With lr_final, the lr cosine then ends at this budget if that comes before the last step.
    init_from: str | None = None  # a trained model folder (e.g. runs/video_frame) whose weights start this
    # run where the designs share parts (VideoVAE.warm_start_from); relative to the current directory

    def __post_init__(self):
        # TOML has nan and inf, and every comparison with nan is False: the range checks below would pass
        # a nan lr (training then makes nan weights), so each real-valued key must be finite first.
        for key in ("lr", "lr_final", "kl_weight", "max_minutes"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be at least 0, got {self.kl_weight}")
        if self.lr_final is not None and not 0 <= self.lr_final <= self.lr:
            raise ValueError(f"lr_final must be between 0 and lr ({self.lr}), got {self.lr_final}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")


# Keys that may change between a run and its --resume: how long to train, where the data lies, which device.
RESUMABLE_CHANGES = frozenset({"train.epochs", "train.max_steps", "train.device", "train.threads",
                               "train.max_minutes", "data.data_dir"})


@dataclass
class TrainRecipe:
    model_kind: str  # a name in the model registry, e.g. "mlp"
    model: Any  # that kind's config dataclass
    data_kind: str  # a name in the task registry, e.g. "mnist"
    data: Any  # that task's data config dataclass
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"  # the recipe file's stem; names the default run folder

    def to_dict(self) -> dict[str, Any]:
        """The recipe as its TOML tables (stored in checkpoints so a run folder explains itself)."""
        return {
            "name": self.name,
            "model": {"kind": self.model_kind, **to_dict(self.model)},
            "data": {"kind": self.data_kind, **to_dict(self.data)},
            "train": to_dict(self.train),
        }

    def with_overrides(self, **train_overrides: Any) -> TrainRecipe:
        """A copy with [train] values replaced (None leaves a value as it is); checked like the TOML."""
        changes = {k: v for k, v in train_overrides.items() if v is not None}
        if not changes:
            return self
        train = from_dict(TrainConfig, {**to_dict(self.train), **changes}, where="train")
        return dataclasses.replace(self, train=train)

    def with_data_dir(self, data_dir: Path | None) -> TrainRecipe:
        if data_dir is None:
            return self
        if "data_dir" not in {f.name for f in dataclasses.fields(self.data)}:
            raise ConfigError(f"data kind {self.data_kind!r} takes no data folder (--data-dir)")
        return dataclasses.replace(self, data=dataclasses.replace(self.data, data_dir=str(data_dir)))


def recipe_from_dict(tables: dict[str, Any], name: str = "run") -> TrainRecipe:
    """Build a recipe from its tables, refusing unknown tables and keys with the offending name."""
    unknown = sorted(set(tables) - {"model", "data", "train", "name"})
    if unknown:
        raise ConfigError(f"unknown recipe table{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(allowed: model, data, train)")
    for table in ("model", "data"):
        if not isinstance(tables.get(table), dict) or "kind" not in tables[table]:
            raise ConfigError(f"the recipe needs a [{table}] table with a kind")
    model_table = dict(tables["model"])
    model_kind = model_table.pop("kind")
    data_table = dict(tables["data"])
    data_kind = data_table.pop("kind")
    if not isinstance(model_kind, str) or not isinstance(data_kind, str):
        raise ConfigError("model.kind and data.kind must be strings")
    train_table = tables.get("train", {})
    if not isinstance(train_table, dict):
        raise ConfigError("[train] must be a table")
    return TrainRecipe(
        model_kind=model_kind,
        model=from_dict(get_kind(model_kind).config_cls, model_table, where="model"),
        data_kind=data_kind,
        data=from_dict(get_task(data_kind).config_cls, data_table, where="data"),
        train=from_dict(TrainConfig, train_table, where="train"),
        name=str(tables.get("name", name)),
    )


def load_recipe(path: Path) -> TrainRecipe:
    """Read a recipe TOML file; errors name the file and the key."""
    path = Path(path)
    try:
        return recipe_from_dict(read_toml(path), name=path.stem)
    except ConfigError as exc:
        if str(path) in str(exc):
            raise
        raise ConfigError(f"{path}: {exc}") from exc


def recipe_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipe dicts, ignoring RESUMABLE_CHANGES and the name."""
    diffs = []
    for table in ("model", "data", "train"):
        a, b = stored.get(table, {}), current.get(table, {})
        for key in sorted(set(a) | set(b)):
            dotted = f"{table}.{key}"
            if dotted not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
                diffs.append(f"{dotted} was {a.get(key)!r}, now {b.get(key)!r}")
    return diffs
