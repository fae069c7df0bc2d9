"""Model kinds by name: the name stored in checkpoints and manifests maps to (config class, model class).

Video models register here as they are added; dispatch always goes through this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vae_deploy.config_io import from_dict
from vae_deploy.errors import ConfigError
from vae_deploy.models.mlp import MLPVAE, MLPVAEConfig


@dataclass(frozen=True)
class ModelKind:
    name: str
    config_cls: type
    model_cls: type[nn.Module]


MODEL_KINDS: dict[str, ModelKind] = {}


def register(name: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    MODEL_KINDS[name] = ModelKind(name, config_cls, model_cls)


def get_kind(name: str) -> ModelKind:
    try:
        return MODEL_KINDS[name]
    except (KeyError, TypeError):  # TypeError: a config's kind that is a list or an object
        raise ConfigError(f"unknown model kind {name!r} (known: {', '.join(sorted(MODEL_KINDS))})") from None


def build_model(name: str, config: dict | object, entry_point: str | None = None) -> nn.Module:
    """Instantiate model kind `name` from a config dataclass or a plain dict (checked key by key).

    `entry_point`: the `--from` factory the user named, which an adapted model's config may then use
    (models/adapters: a config alone never gets code imported)."""
    kind = get_kind(name)
    if isinstance(config, dict):
        config = from_dict(kind.config_cls, config, where="model")
    if entry_point is None:
        return kind.model_cls(config)
    if kind.config_cls is not AdapterConfig:
        raise ConfigError(f"a {name!r} model is built by vae-deploy itself: --from {entry_point} does not "
                          f"apply to it")
    return kind.model_cls(config, entry_point=entry_point)


register("mlp", MLPVAEConfig, MLPVAE)

# Video VAEs (imported here, below the table, so that their modules can use the registry's names freely).
from vae_deploy.models.causal3d import Causal3DVAE, Causal3DVAEConfig  # noqa: E402
from vae_deploy.models.frame import FrameVAE, FrameVAEConfig  # noqa: E402
from vae_deploy.models.temporal import TemporalVAE, TemporalVAEConfig  # noqa: E402

register("frame", FrameVAEConfig, FrameVAE)
register("temporal", TemporalVAEConfig, TemporalVAE)
register("causal3d", Causal3DVAEConfig, Causal3DVAE)

# External VAEs (diffusers families, entry points): one wrapper class, the family chosen by the config.
from vae_deploy.models.adapters import ADAPTER_KINDS, AdaptedVAE, AdapterConfig  # noqa: E402

for _kind in ADAPTER_KINDS:
    register(_kind, AdapterConfig, AdaptedVAE)
