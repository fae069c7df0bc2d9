"""The seed's MNIST VAE: an MLP encoder 784 -> 256 -> 2*latent and decoder latent -> 256 -> 784 (sigmoid).

Same architecture and math as the seed's reference script (benchmarks/seed_reference.py); the module names
(encoder.0, encoder.2, decoder.0, decoder.2) match the seed's nn.Sequential so its state_dict loads.
Layout: images NCHW float32 in [0, 1], (N, 1, 28, 28); latents (N, latent_dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vae_deploy.models.noise import eps_like
from vae_deploy.models.registry import ModelKind, register_kind


@dataclass
class MLPVAEConfig:
    input_dim: int = 28 * 28  # pixels of one MNIST image
    inter_dim: int = 256  # hidden units (the seed's "transition layer")
    latent_dim: int = 2  # 2 gives the classic scatter/manifold pictures; 20 reconstructs better
    image_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W of one image

    def __post_init__(self):
        for name in ("input_dim", "inter_dim", "latent_dim"):
            if getattr(self, name) < 1:  # a zero-width layer trains silently and learns nothing
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.image_shape = tuple(int(v) for v in self.image_shape)
        c, h, w = self.image_shape
        if c * h * w != self.input_dim:
            raise ValueError(f"image_shape {self.image_shape} has {c * h * w} pixels, "
                             f"input_dim is {self.input_dim}")


class MLPVAE(nn.Module):
    kind = "mlp"

    def __init__(self, config: MLPVAEConfig | None = None):
        super().__init__()
        self.config = config or MLPVAEConfig()
        c = self.config
        self.encoder = nn.Sequential(
            nn.Linear(c.input_dim, c.inter_dim),
            nn.ReLU(),
            nn.Linear(c.inter_dim, c.latent_dim * 2),  # each latent has a mean and a log-variance
        )
        self.decoder = nn.Sequential(
            nn.Linear(c.latent_dim, c.inter_dim),
            nn.ReLU(),
            nn.Linear(c.inter_dim, c.input_dim),
            nn.Sigmoid(),
        )

    def _check_images(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            expected = ", ".join(map(str, self.config.image_shape))
            raise ValueError(f"expected images (N, {expected}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) -> (mu, logvar), each (N, latent_dim). Never samples."""
        self._check_images(x)
        h = self.encoder(x.reshape(x.shape[0], -1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) -> images (N, C, H, W) in [0, 1]."""
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"expected latents (N, {self.config.latent_dim}), got {tuple(z.shape)}")
        return self.decoder(z).reshape(z.shape[0], *self.config.image_shape)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + eps * sigma with eps ~ N(0, I): the reparameterization trick (Kingma & Welling, 2014)."""
        eps = eps_like(mu)  # torch.randn_like(mu), or a data-parallel rank's rows (models/noise.py)
        return mu + eps * torch.exp(logvar / 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


register_kind(ModelKind("mlp", MLPVAEConfig, MLPVAE, specs="mlp"))  # images in, flat latents out
