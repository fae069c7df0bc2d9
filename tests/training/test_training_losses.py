"""The MNIST task's loss against a hand computation in numpy (float64): Bernoulli NLL + Gaussian KL
(Kingma & Welling 2014, Appendix B), with the reparameterized sample recomputed from the same noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import tiny_recipe

from vae_deploy.models import MLPVAE, MLPVAEConfig
from vae_deploy.training.tasks import build_task


@pytest.mark.parametrize("kl_weight", [1.0, 0.25])
def test_mnist_task_loss_matches_numpy(kl_weight):
    recipe = tiny_recipe(kl_weight=kl_weight)
    task = build_task("mnist", recipe.data, recipe.train, torch.device("cpu"))
    torch.manual_seed(0)
    model = MLPVAE(MLPVAEConfig(latent_dim=3))
    x = task.test_images[100:116]

    torch.manual_seed(7)
    total, parts, n = task.loss(model, x)

    with torch.no_grad():
        mu, logvar = (t.double().numpy() for t in model.encode(x))
        torch.manual_seed(7)
        eps = torch.randn(mu.shape).double().numpy()  # the draw model(x) made for its sample
        z = mu + eps * np.exp(logvar / 2)
        p = model.decode(torch.from_numpy(z).float()).double().numpy().reshape(16, -1)
    t = x.double().numpy().reshape(16, -1)
    # torch's binary_cross_entropy clamps each log at -100
    bce = -np.sum(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log(1 - p), -100))
    kl = -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar))

    assert n == 16
    assert set(parts) == {"recon", "kl"}
    assert parts["recon"].item() == pytest.approx(bce, rel=1e-5)  # float32 sums over 12,544 pixels
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert total.item() == pytest.approx(bce + kl_weight * kl, rel=1e-5)
    assert 100 < bce / 16 < 1000 and kl > 0  # an untrained model: plausible magnitudes per image


def test_task_batches_cover_the_data_once():
    recipe = tiny_recipe(batch_size=300)
    task = build_task("mnist", recipe.data, recipe.train, torch.device("cpu"))
    batches = list(task.train_batches(torch.Generator().manual_seed(0)))
    assert [b.shape[0] for b in batches] == [300] * 13 + [100]  # the last one is smaller, like the seed's
    assert task.steps_per_epoch() == 14
    seen = torch.cat(batches)
    assert seen.shape == (4000, 1, 28, 28) and seen.dtype == torch.float32
    assert 0.0 <= seen.min() and seen.max() <= 1.0
    # A shuffle, not a copy: the same images in another order.
    assert not torch.equal(seen, task.train_images)
    per_image = seen.flatten(1).sum(1).sort().values  # each image's own sum is order-independent
    assert torch.equal(per_image, task.train_images.flatten(1).sum(1).sort().values)
    assert [b.shape[0] for b in task.valid_batches()] == [300, 300, 300, 100]


def test_valid_holdout_leaves_the_test_split_unseen():
    recipe = tiny_recipe()
    recipe.data.valid_holdout = 500
    task = build_task("mnist", recipe.data, recipe.train, torch.device("cpu"))
    assert task.num_train == 3500 and task.valid_images.shape[0] == 500 and task.test_images.shape[0] == 1000
    held = {bytes(img.numpy()) for img in (task.valid_images * 255).round().byte()}
    kept = {bytes(img.numpy()) for img in (task.train_images * 255).round().byte()}
    assert not held & kept
