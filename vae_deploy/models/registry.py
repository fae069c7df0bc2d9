"""Model kinds by name: the name stored in checkpoints and manifests maps to one `ModelKind` record.

Each kind is registered where its model is defined (`register_kind(ModelKind(...))` at the end of
models/frame.py, ...); `KIND_MODULES` lists those modules, imported on the first lookup (not at import:
they import this module to register). Dispatch always goes through this table: checkpoints and the torch
runner build models with `build_model`, training reads `config_cls`, and export picks graph specs by the
record's `specs`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from vae_deploy.config_io import from_dict
from vae_deploy.errors import ConfigError


@dataclass(frozen=True)
class ModelKind:
    name: str  # what checkpoints and manifests record
    config_cls: type  # the config dataclass, read key by key from a checkpoint's or recipe's [model]
    model_cls: type[nn.Module]
    # The spec builder export uses, by the name it registers it under (export/specs.py: "mlp", "video"). A
    # name, not the function: export sits above models in the layers, so models never import it.
    specs: str = "video"
    # Builds the model when model_cls(config) cannot: (config, the --from factory the user named or None).
    # Only adapted VAEs have one (models/adapters/__init__.py); a kind without it refuses an entry point.
    build: Callable[[Any, str | None], nn.Module] | None = None


MODEL_KINDS: dict[str, ModelKind] = {}

# The modules that register kinds; a new model design adds its module here.
KIND_MODULES = ("vae_deploy.models.mlp", "vae_deploy.models.frame", "vae_deploy.models.temporal",
                "vae_deploy.models.causal3d", "vae_deploy.models.adapters")


def register_kind(kind: ModelKind) -> ModelKind:
    MODEL_KINDS[kind.name] = kind
    return kind


def register(name: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    """A kind whose spec builder is registered under its own name (`register_spec(name, builder)`)."""
    register_kind(ModelKind(name, config_cls, model_cls, specs=name))


def model_kinds() -> dict[str, ModelKind]:
    """Every registered kind, the modules of KIND_MODULES imported first."""
    for module in KIND_MODULES:
        importlib.import_module(module)  # cached after the first time
    return MODEL_KINDS


def get_kind(name: str) -> ModelKind:
    kinds = model_kinds()
    try:
        return kinds[name]
    except (KeyError, TypeError) as err:  # TypeError: a config's kind that is a list or an object
        raise ConfigError(f"unknown model kind {name!r} (known: {', '.join(sorted(kinds))})") from err


def build_model(name: str, config: dict | object, entry_point: str | None = None) -> nn.Module:
    """Instantiate model kind `name` from a config dataclass or a plain dict (checked key by key).

    `entry_point`: the `--from` factory the user named, which an adapted model's config may then use
    (models/adapters: a config alone never gets code imported)."""
    kind = get_kind(name)
    if isinstance(config, dict):
        config = from_dict(kind.config_cls, config, where="model")
    if kind.build is not None:
        return kind.build(config, entry_point)
    if entry_point is not None:
        raise ConfigError(f"a {name!r} model is built by vae-deploy itself: --from {entry_point} does not "
                          f"apply to it")
    return kind.model_cls(config)

