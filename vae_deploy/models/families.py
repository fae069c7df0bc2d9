"""The external VAE families vae-deploy adapts: a diffusers config's `_class_name` -> its model kind and the
module whose `wrap(diffusers_model)` turns it into a module keeping the adapter contract
(models/adapters/contract.py). The next family is one module and one row here.

Torch-free on purpose: `vae-deploy export --help` lists this table on an install without torch, and the
kinds are registered from it by models/adapters/__init__.py. The contract knows nothing of this table.
"""

from __future__ import annotations

from dataclasses import dataclass

ENTRY_POINT_KIND = "entry-point"  # the kind of a module a `--from package.module:factory` returns


@dataclass(frozen=True)
class Family:
    class_name: str  # diffusers' class, as config.json's _class_name spells it
    kind: str  # the model kind manifests and checkpoints record
    module: str  # the module whose wrap() adapts it, imported only when such a model is built


FAMILIES: dict[str, Family] = {f.class_name: f for f in (
    Family("AutoencoderKL", "diffusers-autoencoder-kl", "vae_deploy.models.adapters.diffusers_kl"),
    Family("AutoencoderTiny", "diffusers-autoencoder-tiny", "vae_deploy.models.adapters.diffusers_tiny"),
    Family("AutoencoderKLWan", "diffusers-autoencoder-kl-wan", "vae_deploy.models.adapters.diffusers_wan"),
)}
ADAPTER_KINDS = tuple(f.kind for f in FAMILIES.values()) + (ENTRY_POINT_KIND,)


def family_names() -> str:
    """"AutoencoderKL, AutoencoderTiny, ..." for help texts and error lines."""
    return ", ".join(sorted(FAMILIES))
