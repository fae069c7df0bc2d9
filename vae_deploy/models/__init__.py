"""PyTorch models (bottom layer): the seed MLP VAE and the video VAEs, losses and checkpoints."""

from vae_deploy.models.mlp import MLPVAE, MLPVAEConfig
from vae_deploy.models.registry import build_model, get_kind, register

__all__ = ["MLPVAE", "MLPVAEConfig", "build_model", "get_kind", "register"]
