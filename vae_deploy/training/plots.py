"""Evaluation pictures. matplotlib through its object API on the Agg canvas (no pyplot, no display, no
global state); image grids through runtime.sampling's image_grid and write_image (OpenCV). Every file is
written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vae_deploy.files import atomic_path
from vae_deploy.runtime.sampling import image_grid, write_image


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def save_loss_curves(path: Path, history: list[dict]) -> Path:
    """Train and validation loss per epoch (nats per sample) from metrics.jsonl records."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    marker = "." if len(history) < 30 else None  # dots only while they stay apart
    ax.plot(epochs, [r["train_loss"] for r in history], label="train", marker=marker)
    ax.plot(epochs, [r["valid_loss"] for r in history], label="validation", marker=marker)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per sample (recon + KL)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def save_reconstructions(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor,
                         per_row: int = 16) -> Path:
    """Rows of originals, each followed by the row of their reconstructions, 2 px of grey between the
    images. Images NCHW in [0, 1]."""
    n = min(originals.shape[0], reconstructions.shape[0])
    per_row = min(per_row, n)
    n -= n % per_row  # whole rows only, so every original sits above its reconstruction
    rows = []
    for start in range(0, n, per_row):
        rows += [originals[start:start + per_row], reconstructions[start:start + per_row]]
    images = torch.cat(rows).detach().cpu().numpy()
    write_image(path, image_grid(images, columns=per_row, pad=2, pad_value=0.5))
    return Path(path)


def save_latent_scatter(path: Path, mu: np.ndarray, labels: np.ndarray) -> Path:
    """The 2-D latent means of the test set, coloured by digit."""
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    order = np.random.default_rng(0).permutation(len(labels))  # no digit is drawn over all the others
    points = ax.scatter(mu[order, 0], mu[order, 1], c=labels[order], cmap="tab10", vmin=-0.5, vmax=9.5, s=2,
                        alpha=0.7)
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("test set latent means")
    return _save_figure(fig, path)


def manifold_latents(n: int) -> torch.Tensor:
    """An n x n grid of 2-D latents at the normal quantiles 0.05..0.95, so the grid covers the prior
    evenly in probability (Kingma & Welling 2014, Fig. 4). Row-major, z[1] decreasing down the rows."""
    quantiles = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    values = torch.special.ndtri(quantiles).float()
    z1, z0 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=1)


def save_manifold(path: Path, images: torch.Tensor, n: int) -> Path:
    """Decoded images of `manifold_latents(n)` as an n x n grid, edge to edge."""
    write_image(path, image_grid(images.detach().cpu().numpy(), columns=n, pad=0))
    return Path(path)
