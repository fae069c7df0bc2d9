"""Tiny configs of every video model kind, for tests that must run in seconds (32x32, a few frames).

Imported by the video model tests (pytest puts this folder on sys.path). `perturbed` adds noise to every
parameter so that zero-initialised parts (the temporal Transformer's output projection and position bias)
take part in the checks instead of hiding behind zeros.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_VIDEO_MODELS

from vae_deploy.models import build_model

# The one zoo of tiny video models (tests/conftest.py, which the export and pipeline tests stream), with
# the model tests' variations: a temporal Transformer of two layers, so that attention over attention is
# checked chunked against whole too, and no gray model (these tests make RGB clips; the export and CLI
# tests cover gray). A new design's tiny config goes in conftest.py only.
TINY_VIDEO_CONFIGS: dict[str, tuple[str, dict]] = {
    **{name: entry for name, entry in TINY_VIDEO_MODELS.items() if name != "frame-gray"},
    "temporal": ("temporal", {**TINY_VIDEO_MODELS["temporal"][1], "layers": 2}),
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run on one thread: on a shared 2-core machine a second OpenMP thread waits for a core
    at every op (a tiny causal 3D encode measured 230 ms on two threads, 4 ms on one). Import it into a
    test module to apply it there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    kind, config = TINY_VIDEO_CONFIGS[name]
    torch.manual_seed(seed)
    return perturbed(build_model(kind, config), seed)
