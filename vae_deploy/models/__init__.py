"""PyTorch models (bottom layer): the seed MLP VAE and the video VAEs, losses and checkpoints.

The names below are imported on first use (PEP 562): the torch-free table of external VAE families
(models/families.py) is read by the CLI's help on an edge install without torch, which imports this
package first.
"""

from __future__ import annotations

from vae_deploy.lazy_names import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
