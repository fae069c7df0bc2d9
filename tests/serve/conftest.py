"""Fixtures of the serve tests: the tiny causal model (temporal factor 2) and its local codec."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed")

SERVE_MODEL = "causal3d-t2"


@pytest.fixture(scope="module")
def serve_model(tiny_video_model):
    return tiny_video_model(SERVE_MODEL)


@pytest.fixture(scope="module")
def local_codec(serve_model):
    """name -> a fresh LatentCodec on the model (ort-cpu, one thread: the server's settings in the tests)."""
    from vae_deploy.video.latent_codec import LatentCodec
    from vae_deploy.video.model_open import ModelChoice, open_model

    runner = open_model(ModelChoice(serve_model, "ort-cpu", 1))
    yield lambda: LatentCodec(runner)
    runner.close()
