"""The project's model and trainer against the seed's own code (benchmarks/seed_reference.py): with the same
torch seed they must give the same numbers, bit for bit, so the seed's results carry over."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from training_helpers import tiny_recipe

from vae_deploy.data import load_mnist
from vae_deploy.models import MLPVAE, MLPVAEConfig
from vae_deploy.training.trainer import Trainer


class SeedVAE(nn.Module):
    """The seed's class (comments dropped)."""

    def __init__(self, input_dim=784, inter_dim=256, latent_dim=2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(input_dim, inter_dim), nn.ReLU(),
                                     nn.Linear(inter_dim, latent_dim * 2))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, inter_dim), nn.ReLU(),
                                     nn.Linear(inter_dim, input_dim), nn.Sigmoid())

    def reparameterize(self, mu, logvar):
        epsilon = torch.randn_like(mu)
        return mu + epsilon * torch.exp(logvar / 2)

    def forward(self, x):
        org_size = x.size()
        batch = org_size[0]
        x = x.view(batch, -1)
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=1)
        z = self.reparameterize(mu, logvar)
        recon_x = self.decoder(z).view(size=org_size)
        return recon_x, mu, logvar


def kl_loss(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def recon_loss(recon_x, x):
    return F.binary_cross_entropy(recon_x, x, reduction="sum")


def as_dataset(split: str) -> TensorDataset:
    data = load_mnist(split, "mnist-5k")
    images = torch.from_numpy(data.images).float().div(255).unsqueeze(1)
    return TensorDataset(images, torch.from_numpy(data.labels))


def seed_script(epochs: int, seed: int = 0) -> tuple[list[tuple[float, float]], dict[str, torch.Tensor]]:
    """The seed's training loop (its DataLoaders, its body), returning (train, valid) loss per epoch."""
    torch.manual_seed(seed)
    train_loader = DataLoader(as_dataset("train"), batch_size=128, shuffle=True, num_workers=0)
    test_loader = DataLoader(as_dataset("test"), batch_size=128, shuffle=False, num_workers=0)
    model = SeedVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _epoch in range(epochs):
        model.train()
        train_loss = 0.0
        for _idx, (x, _) in enumerate(train_loader):
            batch = x.size(0)
            recon_x, mu, logvar = model(x)
            loss = recon_loss(recon_x, x) + kl_loss(mu, logvar)
            train_loss += loss.item()
            loss = loss / batch
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        valid_loss = 0.0
        model.eval()
        with torch.no_grad():
            for _idx, (x, _) in enumerate(test_loader):
                recon_x, mu, logvar = model(x)
                valid_loss += (recon_loss(recon_x, x) + kl_loss(mu, logvar)).item()
        losses.append((train_loss / len(train_loader.dataset), valid_loss / len(test_loader.dataset)))
    return losses, model.state_dict()


def test_mlpvae_is_the_seed_model():
    """Same parameters from the same seed, same names, same sampled forward pass."""
    torch.manual_seed(3)
    seed_model = SeedVAE()
    torch.manual_seed(3)
    ours = MLPVAE(MLPVAEConfig())
    assert list(seed_model.state_dict()) == list(ours.state_dict())
    for a, b in zip(seed_model.state_dict().values(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.rand(5, 1, 28, 28)
    torch.manual_seed(4)
    expected = seed_model(x)
    torch.manual_seed(4)
    got = ours(x)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_trainer_retraces_the_seed_script(tmp_path):
    expected, seed_weights = seed_script(epochs=2)
    trainer = Trainer(tiny_recipe(epochs=2), tmp_path / "run", console=Console(quiet=True))
    result = trainer.fit()
    got = [(r["train_loss"], r["valid_loss"]) for r in result.history]
    assert got == expected  # exactly: same draws, same order, same float64 sums
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, seed_weights[name]), name
