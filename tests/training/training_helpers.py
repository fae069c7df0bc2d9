"""Helpers for the training tests: tiny recipes on the mnist-5k subset (4000 train / 1000 test images,
32 steps per epoch at batch 128), so real training runs take well under a second per epoch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vae_deploy.training.config import TrainRecipe, recipe_from_dict

STEPS_PER_EPOCH_5K = 32  # ceil(4000 / 128)


def tiny_recipe(epochs: int = 2, latent_dim: int = 2, **train) -> TrainRecipe:
    return recipe_from_dict({
        "model": {"kind": "mlp", "latent_dim": latent_dim},
        "data": {"kind": "mnist", "source": "mnist-5k"},
        "train": {"epochs": epochs, "device": "cpu", **train},
    }, name="tiny")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore. These models are tiny: one thread is as fast on a quiet
    machine and many times faster on a busy one (OpenMP threads spin waiting for a core)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
