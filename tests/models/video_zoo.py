"""Tiny configs of every video model kind, for tests that must run in seconds (32x32, a few frames).

Imported by the video model tests (pytest puts this folder on sys.path). `perturbed` adds noise to every
parameter so that zero-initialised parts (the temporal Transformer's output projection and position bias)
take part in the checks instead of hiding behind zeros.
"""

from __future__ import annotations

import pytest
import torch

from vae_deploy.models import build_model

_FRAME = {"channels": 16, "fine_channels": 8, "latent_channels": 4, "downsample": 8}

TINY_VIDEO_CONFIGS: dict[str, tuple[str, dict]] = {
    "frame": ("frame", dict(_FRAME)),
    "temporal": ("temporal", {"frame": dict(_FRAME), "window": 3, "d_model": 16, "heads": 2, "layers": 2}),
    "causal3d-t1": ("causal3d", {**_FRAME, "temporal_downsample": 1}),
    "causal3d-t2": ("causal3d", {**_FRAME, "temporal_downsample": 2}),
    "causal3d-t4": ("causal3d", {**_FRAME, "temporal_downsample": 4, "kernel_t": 2}),
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
