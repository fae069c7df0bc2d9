"""VAE losses, summed over the batch like the seed (the step divides by the batch size)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over batch and latent dims.

    Closed form for diagonal Gaussians: -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2),
    Kingma & Welling, "Auto-Encoding Variational Bayes", 2014, Appendix B.
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def bce_reconstruction(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood summed over everything (the seed's size_average=False)."""
    return F.binary_cross_entropy(recon, target, reduction="sum")


def mse_reconstruction(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over everything: a Gaussian likelihood with fixed variance, for RGB video."""
    return F.mse_loss(recon, target, reduction="sum")


def vae_loss(recon, target, mu, logvar, recon_fn=bce_reconstruction, kl_weight: float = 1.0):
    """Return (total, recon, kl), each summed over the batch: the seed's `recon + kl`."""
    recon_term = recon_fn(recon, target)
    kl_term = kl_divergence(mu, logvar)
    return recon_term + kl_weight * kl_term, recon_term, kl_term
