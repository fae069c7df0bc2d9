"""Fixtures for the training tests (helpers in training_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import one_thread, tiny_recipe


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run (latent 2) on mnist-5k. Read-only: copy it before changing anything."""
    from rich.console import Console

    from vae_deploy.training.trainer import train

    out = tmp_path_factory.mktemp("trained_run") / "run"
    with one_thread():
        train(tiny_recipe(epochs=2), out, console=Console(quiet=True))
    return out
