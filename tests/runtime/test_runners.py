"""The Runner contract on real backends: ort-cpu against the torch reference, validation, errors, no torch."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vae_deploy.errors import InputShapeError, MissingBackendError, VaeDeployError
from vae_deploy.runtime import available_backends, get_backend, load_runner
from vae_deploy.runtime.sampling import image_grid, reparameterize, sample_prior


@pytest.fixture(scope="module")
def ort(mlp_model_dir):
    with load_runner(mlp_model_dir, "ort-cpu") as runner:
        yield runner


@pytest.fixture(scope="module")
def reference(mlp_model_dir):
    with load_runner(mlp_model_dir, "torch") as runner:
        yield runner


def test_encode_decode_match_the_torch_reference(ort, reference, mnist_test_images):
    images = mnist_test_images[:64]
    mu, logvar = ort.encode(images)
    ref_mu, ref_logvar = reference.encode(images)
    assert mu.shape == logvar.shape == (64, 2) and mu.dtype == np.float32
    np.testing.assert_allclose(mu, ref_mu, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logvar, ref_logvar, rtol=0, atol=1e-5)
    recon = ort.decode(mu)
    assert recon.shape == (64, 1, 28, 28) and 0.0 <= recon.min() and recon.max() <= 1.0
    np.testing.assert_allclose(recon, reference.decode(mu), rtol=0, atol=1e-5)
    # The fixture's short training is real: reconstructions beat the best constant guess, the mean image.
    assert np.mean((recon - images) ** 2) < np.mean((images - images.mean(axis=0)) ** 2)


def test_stream_of_a_stateless_model_equals_single_calls(ort, mnist_test_images):
    stream = ort.open_stream()
    chunks = [stream.encode(mnist_test_images[i:i + 5])[0] for i in range(0, 20, 5)]
    np.testing.assert_array_equal(np.concatenate(chunks), ort.encode(mnist_test_images[:20])[0])


def test_wrong_shape_and_dtype_name_the_expected_shape(ort):
    with pytest.raises(InputShapeError, match=r"encoder input 'images' must be float32 \(batch, 1, 28, 28\)"):
        ort.encode(np.zeros((4, 784), np.float32))
    with pytest.raises(InputShapeError, match=r"must be float32 \(batch, 1, 28, 28\), got dtype float64"):
        ort.encode(np.zeros((4, 1, 28, 28)))
    with pytest.raises(InputShapeError, match=r"input 'z' must be float32 \(batch, 2\).*axis 1 is 3, not 2"):
        ort.decode(np.zeros((4, 3), np.float32))
    with pytest.raises(InputShapeError, match="takes 1 input"):
        ort.run("encoder", [np.zeros((1, 1, 28, 28), np.float32)] * 2)


def test_nan_inputs_are_reported_not_propagated(ort):
    z = np.zeros((3, 2), np.float32)
    z[2, 1] = np.nan
    with pytest.raises(InputShapeError,
                       match=r"decoder input 'z' contains 1 NaN value\(s\) \(first at index \(2, 1\)\)"):
        ort.decode(z)


def test_missing_and_unknown_backends_say_what_to_do(mlp_model_dir):
    import onnxruntime

    here = available_backends()
    assert {"ort-cpu", "torch"} <= set(here)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "ort-cuda" not in here
        pattern = r"'ort-cuda' is not available.*pip install onnxruntime-gpu.*available here: ort-cpu, torch"
        with pytest.raises(MissingBackendError, match=pattern):
            load_runner(mlp_model_dir, "ort-cuda")
    with pytest.raises(MissingBackendError,
                       match=r"unknown backend 'tensorflow' \(known: ort-cpu, ort-cuda, torch"):
        get_backend("tensorflow")


def test_closed_runner_refuses_work(mlp_model_dir):
    runner = load_runner(mlp_model_dir, "ort-cpu")
    runner.close()
    with pytest.raises(VaeDeployError, match="closed"):
        runner.decode(np.zeros((1, 2), np.float32))


def test_sampling_is_seeded_and_gridded(ort):
    a, b = sample_prior(ort, 10, seed=3), sample_prior(ort, 10, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_prior(ort, 10, seed=4))
    grid = image_grid(a, pad=2)
    # 10 images: 4 columns, 3 rows of 28 pixels plus 2 of padding.
    assert grid.dtype == np.uint8 and grid.shape == (2 + 3 * 30, 2 + 4 * 30, 1)
    np.testing.assert_array_equal(grid[2:30, 2:30, 0], np.rint(a[0, 0] * 255).astype(np.uint8))
    mu, logvar = np.zeros((2, 5), np.float32), np.full((2, 5), np.log(4.0), np.float32)
    z = reparameterize(mu, logvar, seed=0)
    np.testing.assert_allclose(z, 2.0 * np.random.default_rng(0).standard_normal((2, 5)), rtol=1e-6)


TORCH_FREE = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch.") or name == "torchvision":
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    from vae_deploy.runtime import available_backends, load_runner
    from vae_deploy.runtime.sampling import sample_prior
    from vae_deploy.errors import MissingBackendError

    model_dir = sys.argv[1]
    with load_runner(model_dir, "ort-cpu") as runner:
        mu, logvar = runner.encode(np.full((3, 1, 28, 28), 0.5, np.float32))
        images = runner.decode(mu)
        samples = sample_prior(runner, 4, seed=0)
        stream = runner.open_stream()
        stream.decode(mu)
    assert images.shape == (3, 1, 28, 28) and samples.shape == (4, 1, 28, 28)
    assert "torch" not in available_backends(), available_backends()
    try:
        load_runner(model_dir, "torch")
    except MissingBackendError as exc:
        print("torch backend:", exc)
    else:
        raise SystemExit("the torch backend loaded without torch")
    # The CLI's generation path too: `vae-deploy sample` decodes and writes the PNG with numpy + OpenCV.
    from vae_deploy.cli.app import main
    sys.argv = ["vae-deploy", "sample", model_dir, "-n", "16", "--out", sys.argv[2], "--seed", "1"]
    main()
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, leaked
    print("ok without torch")
""")


def test_runtime_works_without_torch(mlp_model_dir, tmp_path):
    grid = tmp_path / "grid.png"
    result = subprocess.run([sys.executable, "-c", TORCH_FREE, str(mlp_model_dir), str(grid)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ok without torch" in result.stdout
    assert grid.is_file() and grid.stat().st_size > 0
    assert "torch backend: backend 'torch' is not available" in result.stdout
    assert "pip install 'vae-deploy[train]'" in result.stdout
