"""The torch device a recipe asks for."""

from __future__ import annotations

import torch

from vae_deploy.errors import ConfigError, MissingBackendError


def resolve_device(name: str) -> torch.device:
    """"auto" = cuda when available (the seed's rule), else cpu; anything else must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown torch device {name!r} (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MissingBackendError(f"device {name!r} asked for, but torch sees no CUDA GPU here")
    return device
