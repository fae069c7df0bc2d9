"""Shared fixtures: one small model zoo for every test that needs a checkpoint or a model folder.

Add fixtures, do not rewrite others' (several helpers edit this file). Session-scoped folders are shared:
a test that modifies one must copy it first (shutil.copytree into its tmp_path).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from shared_artifacts import build_once
from tiny_models import TINY_VIDEO_MODELS

# ---------------------------------------------------------------- whole suite (lead)

# The suite runs several test processes on few cores (pytest -n 4): one OpenMP thread per torch process,
# in the `vae-deploy` processes the tests start as well, instead of one per core each, spinning on cores
# that the other processes need. Speed only; every comparison has its tolerance for thread counts.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread_per_test_process():
    """The test models are tiny: on a 2-core CI machine a second OpenMP thread only waits for a core at
    every op (measured here: 11 ms vs 0.04 ms per batch-1 MLP call). Speed only; results are unchanged."""
    try:
        import torch
    except ImportError:  # the torch-free install: nothing to set
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the `slow` mark (lead)

# parameter ids of the cases that need a Wan-class export (a minute or two each on 2 cores)
SLOW_PARAMETER_IDS = {"wan2.1", "wan2.2"}


def pytest_collection_modifyitems(items):
    """`slow` on every case that reads a Wan-class export (external_model with a parameter id above, or
    "wan" in the test's name), besides the tests marked by hand: what a contributor may skip locally with
    -m "not slow" (CI runs everything)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        wan_case = callspec is not None and SLOW_PARAMETER_IDS & set(callspec.id.split("-"))
        if "external_model" in item.fixturenames and (wan_case or "_wan" in item.originalname):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------- MLP checkpoint and model folders (B)

MLP_TRAIN_STEPS = 150  # real Adam steps on real MNIST: weights with realistic magnitudes, in about a second


@pytest.fixture(scope="session")
def mnist_test_images() -> np.ndarray:
    """1000 real MNIST test images (the mnist-5k subset's test split), float32 (N, 1, 28, 28) in [0, 1]."""
    from vae_deploy.data.mnist import load_mnist

    images = load_mnist("test", source="mnist-5k").images
    return (images.astype(np.float32) / 255.0)[:, None]


@pytest.fixture(scope="session")
def mlp_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder of the seed MLP VAE (784-256-2) after a short real training run."""
    return build_once(tmp_path_factory, "mlp_checkpoint", _train_mlp_checkpoint)


def _train_mlp_checkpoint(folder: Path) -> None:
    import torch

    from vae_deploy.data.mnist import load_mnist
    from vae_deploy.models import MLPVAE, MLPVAEConfig
    from vae_deploy.models.checkpoint import save_model
    from vae_deploy.models.losses import vae_loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second OpenMP thread costs more than it gives on a busy CPU
    torch.manual_seed(0)
    train = torch.from_numpy(load_mnist("train", source="mnist-5k").images).float().div_(255).unsqueeze(1)
    model = MLPVAE(MLPVAEConfig(latent_dim=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(MLP_TRAIN_STEPS):
        x = train[torch.randint(0, train.shape[0], (128,), generator=gen)]
        recon, mu, logvar = model(x)
        loss = vae_loss(recon, x, mu, logvar)[0] / x.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    save_model(folder, model.eval())


@pytest.fixture(scope="session")
def mlp_model_dir(tmp_path_factory, mlp_checkpoint, mnist_test_images) -> Path:
    """The MLP checkpoint exported with the default (cpu-fp32) profile. Read-only: copy before modifying."""
    from vae_deploy.export import export_model

    root = build_once(tmp_path_factory, "mlp_model", lambda root: export_model(
        mlp_checkpoint, root / "model", real_inputs=mnist_test_images))
    return root / "model"


@pytest.fixture(scope="session")
def mlp_model_fp16_dir(tmp_path_factory, mlp_checkpoint, mnist_test_images) -> Path:
    """The MLP checkpoint exported with export/gpu-fp16.toml (fp16 weights, float32 I/O). Read-only."""
    from vae_deploy.export import export_model, load_profile

    profile = load_profile(Path(__file__).parents[1] / "export" / "gpu-fp16.toml")
    root = build_once(tmp_path_factory, "mlp_model_fp16",
                      lambda root: export_model(mlp_checkpoint, root / "model", profile,
                                                real_inputs=mnist_test_images))
    return root / "model"


# ---------------------------------------------------------------- tiny exported video models (F)

TINY_VIDEO_SHORT_SIDE = 32  # recorded as the training short side, so `run` defaults to small frames


@pytest.fixture(scope="session")
def tiny_video_model(tmp_path_factory):
    """name -> model folder of a tiny video model (TINY_VIDEO_MODELS), exported once per session with the
    default profile (its ort-cpu parity checked). Random weights, perturbed so that zero-initialised parts
    take part. Read-only: copy before modifying."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_once(tmp_path_factory, f"video_{name}",
                                     lambda root: _export_tiny_video_model(name, root)) / "model"
        return built[name]

    return get


def _export_tiny_video_model(name: str, root: Path) -> None:
    import torch

    from vae_deploy.export import ExportProfile, export_model, graph_specs
    from vae_deploy.export.real_inputs import real_inputs_for
    from vae_deploy.models import build_model
    from vae_deploy.models.checkpoint import save_model

    kind, config = TINY_VIDEO_MODELS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = build_model(kind, config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        recipe = {"data": {"short_side": TINY_VIDEO_SHORT_SIDE}}
        save_model(root / "ckpt", model, extra={"recipe": recipe})
        # What `vae-deploy export` does by default (the default profile, the packaged clip's real frames),
        # so tests/export/test_video_export.py checks these exports instead of making its own.
        encoder = graph_specs(kind, model.config)["encoder"]
        real = real_inputs_for(kind, 1000, "auto", None, encoder)  # export's --real default
        _, report = export_model(root / "ckpt", root / "model", ExportProfile(), real_inputs=real)
        assert report.passed, report.failures()
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- a tiny exported diffusers frame VAE

# diffusers AutoencoderKL at tiny widths (2x spatial factor), SD 1.x style: scaling factor 0.18215, no shift.
TINY_KL_CONFIG = {"down_block_types": ("DownEncoderBlock2D",) * 2,
                  "up_block_types": ("UpDecoderBlock2D",) * 2,
                  "block_out_channels": (8, 16), "layers_per_block": 1, "latent_channels": 4,
                  "norm_num_groups": 8}


@pytest.fixture(scope="session")
def tiny_kl_model(tmp_path_factory) -> Path:
    """Model folder of a tiny diffusers AutoencoderKL (random weights from seed 0, save_pretrained, then
    exported through vae-deploy's own diffusers loader, parity at batch 1): a frame VAE with a latent
    normalization. Read-only: copy before modifying."""
    return build_once(tmp_path_factory, "tiny_kl", _export_tiny_kl_model) / "model"


def _export_tiny_kl_model(root: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    from vae_deploy.export import ExportProfile, export_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        AutoencoderKL(**TINY_KL_CONFIG).save_pretrained(str(root / "diffusers"))
        _, report = export_model(root / "diffusers", root / "model", ExportProfile(parity_batch_sizes=(1,)))
        assert report.passed, report.failures()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def vd(capsys, monkeypatch):
    """`vae-deploy` through main() in this process (a test module may define its own)."""
    from cli_support import invoke_main

    return lambda *args: invoke_main(monkeypatch, capsys, *args)


@pytest.fixture(scope="module")
def carphone() -> Path:
    """The packaged demo clip (carphone_pristine, 176x144, 120 frames)."""
    from vae_deploy.video.samples import sample_video_path

    return sample_video_path("carphone_pristine")


# ---------------------------------------------------------------- the packaged demo's folder (test time)


@pytest.fixture(scope="session")
def packaged_demo_dir(tmp_path_factory) -> Path:
    """The folder `vae-deploy demo --out-dir OUT --quiet` writes (the packaged default model on the packaged
    clip: metrics.json, report.html, the videos), run once per test run as a real process: three modules
    read the same 120-frame demo, which they each ran (about 6 CPU s a run). Read-only: copy before
    modifying."""
    return build_once(tmp_path_factory, "packaged_demo", _run_packaged_demo) / "out"


def _run_packaged_demo(root: Path) -> None:
    from cli_support import cli_process

    result = cli_process("demo", "--out-dir", root / "out", "--quiet")
    assert result.returncode == 0, result.stderr
