"""PyTorch models (bottom layer): the seed MLP VAE and the video VAEs, losses and checkpoints.

The names below are imported on first use (PEP 562): the torch-free table of external VAE families
(models/families.py) is read by the CLI's help on an edge install without torch, which imports this
package first.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MLPVAE": "vae_deploy.models.mlp",
    "MLPVAEConfig": "vae_deploy.models.mlp",
    "build_model": "vae_deploy.models.registry",
    "get_kind": "vae_deploy.models.registry",
    "register": "vae_deploy.models.registry",
    "register_kind": "vae_deploy.models.registry",
    "ModelKind": "vae_deploy.models.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
