"""`evaluate`: the test loss computed like the seed's validation, and the pictures, checked pixel by pixel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from training_helpers import one_thread, tiny_recipe

from vae_deploy.data import load_mnist
from vae_deploy.errors import ConfigError, ModelFormatError, VaeDeployError
from vae_deploy.models.checkpoint import load_model
from vae_deploy.training.evaluation import evaluate_run
from vae_deploy.training.plots import manifold_latents
from vae_deploy.training.trainer import train


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def as_saved(images: torch.Tensor) -> np.ndarray:
    """A (N, 1, H, W) batch in [0, 1] as 8-bit gray levels, (N, H, W)."""
    return images.squeeze(1).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def tiles(grid: np.ndarray, n: int, per_row: int, side: int, pad: int) -> np.ndarray:
    """The n side x side images of a grid laid out row by row, `pad` pixels around each."""
    corners = [(pad + row * (side + pad), pad + column * (side + pad))
               for row, column in (divmod(i, per_row) for i in range(n))]
    return np.stack([grid[top:top + side, left:left + side] for top, left in corners])


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory):
    with one_thread():  # like the tests: the thread count changes float rounding
        return evaluate_run(trained_run, out_dir=tmp_path_factory.mktemp("eval"), seed=0, device="cpu")


def test_test_loss_is_the_seeds_validation(report, trained_run):
    """Same batches (128, in order), same formulas, sampled z: recomputed here by hand."""
    model, _ = load_model(trained_run)
    test = load_mnist("test", "mnist-5k")
    images = torch.from_numpy(test.images).float().div(255).unsqueeze(1)
    torch.manual_seed(0)
    total = recon = kl = 0.0
    with torch.no_grad():
        for start in range(0, 1000, 128):
            x = images[start:start + 128]
            recon_x, mu, logvar = model(x)
            r = F.binary_cross_entropy(recon_x, x, reduction="sum")
            k = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            total += (r + k).item()
            recon += r.item()
            kl += k.item()
    assert report["test_samples"] == 1000
    assert report["test_loss"] == pytest.approx(total / 1000, rel=1e-12)
    assert report["test_recon"] == pytest.approx(recon / 1000, rel=1e-12)
    assert report["test_kl"] == pytest.approx(kl / 1000, rel=1e-12)
    assert report["epoch"] == 1 and report["partial"] is False and report["kind"] == "mlp"
    saved = json.loads((Path(report["pictures"]["manifold"]).parent / "report.json").read_text())
    assert saved == report


def test_seed_changes_only_the_sampling_noise(report, trained_run, tmp_path):
    again = evaluate_run(trained_run, out_dir=tmp_path / "a", seed=0, device="cpu")
    other = evaluate_run(trained_run, out_dir=tmp_path / "b", seed=1, device="cpu")
    assert again["test_loss"] == report["test_loss"]
    assert other["test_loss"] != report["test_loss"]
    assert other["test_loss"] == pytest.approx(report["test_loss"], rel=0.01)
    assert other["test_kl"] == report["test_kl"]  # KL uses mu and logvar only: no noise


def test_reconstructions_use_mu(report, trained_run):
    model, _ = load_model(trained_run)
    images = torch.from_numpy(load_mnist("test", "mnist-5k").images).float().div(255).unsqueeze(1)
    originals = images[torch.linspace(0, 999, 64).long()]
    with torch.no_grad():
        recon = model.decode(model.encode(originals)[0])
    rows = []
    for start in range(0, 64, 16):
        rows += [originals[start:start + 16], recon[start:start + 16]]
    got = png(report["pictures"]["reconstructions"])
    assert got.shape == (8 * 30 + 2, 16 * 30 + 2)  # 8 rows of 16 images of 28 px, 2 px apart and around
    np.testing.assert_array_equal(tiles(got, 128, 16, 28, 2), as_saved(torch.cat(rows)))
    rows_of_images = np.isin(np.arange(got.shape[0]) % 30, range(2, 30))
    columns_of_images = np.isin(np.arange(got.shape[1]) % 30, range(2, 30))
    between = ~(rows_of_images[:, None] & columns_of_images[None, :])
    assert np.unique(got[between]).tolist() == [128]  # 0.5 grey between and around the images


def test_manifold_decodes_the_normal_quantile_grid(report, trained_run):
    model, _ = load_model(trained_run)
    z = manifold_latents(20)
    assert z.shape == (400, 2)
    assert z[0].tolist() == pytest.approx([-1.6449, 1.6449], abs=1e-4)  # top left: 5% / 95% quantiles
    assert z[-1].tolist() == pytest.approx([1.6449, -1.6449], abs=1e-4)
    with torch.no_grad():
        expected = as_saved(model.decode(z))
    got = png(report["pictures"]["manifold"])
    assert got.shape == (20 * 28, 20 * 28)  # edge to edge
    np.testing.assert_array_equal(tiles(got, 400, 20, 28, 0), expected)


def test_plots_are_real_pictures(report):
    assert set(report["pictures"]) == {"reconstructions", "latent_scatter", "manifold", "loss_curves"}
    for name in ("latent_scatter", "loss_curves"):
        image = png(report["pictures"][name])
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 20  # not blank: axes, points, text


def test_latent_20_has_no_2d_pictures(tmp_path):
    out = tmp_path / "run"
    train(tiny_recipe(epochs=1, latent_dim=20), out, console=Console(quiet=True))
    report = evaluate_run(out, seed=0, device="cpu")
    assert set(report["pictures"]) == {"reconstructions", "loss_curves"}
    assert (out / "eval" / "reconstructions.png").is_file()


def test_checkpoint_whose_config_does_not_match(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["latent_dim"] = 20
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="does not match its config"):
        evaluate_run(run, device="cpu")


def test_not_a_run_folder(tmp_path, trained_run):
    with pytest.raises(ModelFormatError, match="config.json is missing"):
        evaluate_run(tmp_path, device="cpu")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    del config["recipe"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="no training recipe"):
        evaluate_run(run, device="cpu")


def test_unwritable_picture_folder(trained_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(VaeDeployError, match="cannot write to output folder"):
        evaluate_run(trained_run, out_dir=blocker / "eval", device="cpu")
