"""Parity floors, tested: fp32 ORT-CPU vs PyTorch max abs <= 1e-5 on every output at batch 1/7/128/1000 and
on real MNIST; fp16 decoder PSNR >= 50 dB vs the fp32 reference. And a real mismatch is caught."""

import shutil

import numpy as np
import pytest
import torch

from vae_deploy.export import check_parity
from vae_deploy.models.checkpoint import load_model, save_model
from vae_deploy.runtime import load_runner, read_manifest
from vae_deploy.runtime.manifest import hash_files, write_manifest

BATCHES = (1, 7, 128, 1000)


def _report(model_dir, images, backend="ort-cpu"):
    with load_runner(model_dir, backend) as runner, load_runner(model_dir, "torch") as reference:
        return check_parity(runner, reference, images, BATCHES, seed=1)


def test_fp32_parity_floor(mlp_model_dir, mnist_test_images):
    report = _report(mlp_model_dir, mnist_test_images)
    cases = {(c.graph, c.output, c.case, c.batch) for c in report.comparisons}
    for graph, outputs in (("encoder", ("mu", "logvar")), ("decoder", ("images",))):
        for output in outputs:
            assert (graph, output, "real", 1000) in cases
            assert {(graph, output, "random", b) for b in BATCHES} <= cases
    worst = max(c.max_abs for c in report.comparisons)
    assert worst <= 1e-5, [c for c in report.comparisons if c.max_abs > 1e-5]
    assert report.passed
    # The export-time report in the manifest came from the same check.
    parity = read_manifest(mlp_model_dir).parity
    assert parity["passed"] and max(c["max_abs"] for c in parity["comparisons"]) <= 1e-5


def test_fp16_decoder_psnr_floor(mlp_model_fp16_dir, mnist_test_images):
    report = _report(mlp_model_fp16_dir, mnist_test_images)
    decoder = [c for c in report.comparisons if c.graph == "decoder"]
    assert {c.batch for c in decoder if c.case == "random"} == set(BATCHES)
    assert min(c.psnr_db for c in decoder) >= 50.0, [(c.case, c.batch, c.psnr_db) for c in decoder]
    assert report.passed and report.precision == "fp16"
    assert all(c.limit == "psnr>=50dB" for c in report.comparisons)


def test_a_real_mismatch_fails_parity(mlp_model_dir, tmp_path):
    """Graphs from one model, reference from a slightly different one (hashes updated): parity must fail."""
    folder = shutil.copytree(mlp_model_dir, tmp_path / "m")
    model, _ = load_model(folder / "reference")
    with torch.no_grad():
        model.decoder[2].bias.add_(1e-3)  # a tiny change: invisible to the eye, not to the parity check
    save_model(folder / "reference", model)
    manifest = read_manifest(folder, check_files=False)
    manifest.files = hash_files(folder, list(manifest.files))
    write_manifest(folder, manifest)
    report = _report(folder, None)
    failing = {(c.graph, c.output) for c in report.failures()}
    assert failing == {("decoder", "images")}
    assert all(c.max_abs > 1e-5 for c in report.failures())
    assert not report.passed


@pytest.mark.parametrize("batch", [1, 1000])
def test_reparameterized_decode_through_ort(mlp_model_dir, mnist_test_images, batch):
    """Sampling lives in the runtime: mu + eps * sigma with a seed, identical to doing it by hand."""
    from vae_deploy.runtime.sampling import reparameterize

    with load_runner(mlp_model_dir, "ort-cpu") as runner:
        mu, logvar = runner.encode(mnist_test_images[:batch])
        z = reparameterize(mu, logvar, seed=5)
        eps = np.random.default_rng(5).standard_normal(mu.shape).astype(np.float32)
        np.testing.assert_allclose(z, mu + eps * np.exp(logvar / 2), rtol=1e-6)
        assert runner.decode(z).shape == (batch, 1, 28, 28)
