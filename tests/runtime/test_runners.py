"""The Runner contract on real backends: ort-cpu against the torch reference, validation, errors, no torch."""

import ast
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from cpu_device_runners import OrtBoundCpuRunner, TorchCpuDeviceRunner

import vae_deploy
from vae_deploy.errors import (
    ConfigError,
    InputShapeError,
    MissingBackendError,
    ModelFormatError,
    VaeDeployError,
)
from vae_deploy.runtime import available_backends, get_backend, load_runner, read_manifest
from vae_deploy.runtime.ort_session import CPU, CUDA, build_session
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



@pytest.mark.parametrize("runner_class", [OrtBoundCpuRunner, TorchCpuDeviceRunner], ids=["ort", "torch"])
def test_device_calls_check_their_inputs_like_run(mlp_model_dir, runner_class):
    """device_call (the GPU backends' timing entry) takes inputs as Runner.run does, with the same checks:
    one InputShapeError for a wrong count or an unknown name (a wrong count was a bare ValueError)."""
    z = np.zeros((3, 2), np.float32)
    with runner_class(mlp_model_dir) as runner:
        runner.device_call("decoder", [z])()
        runner.device_call("decoder", {"z": z})()
        with pytest.raises(InputShapeError, match=r"decoder takes 1 input\(s\) \(z\), got 2"):
            runner.device_call("decoder", [z, z])
        with pytest.raises(InputShapeError, match="decoder has no input zz"):
            runner.device_call("decoder", {"z": z, "zz": z})
        with pytest.raises(InputShapeError, match=r"decoder takes 1 input\(s\) \(z\), got 2"):
            runner.open_stream().decode([z, z])


def test_ort_session_options_are_checked_and_applied(mlp_model_dir, mnist_test_images, ort):
    """A bad session option is the user's ConfigError (it was reported as a model file that cannot load), on
    the IO-binding runner too, where it is not mistaken for a graph that cannot be captured."""
    images = mnist_test_images[:16]
    with pytest.raises(ConfigError, match="unknown optimization level 'fastest'.*known: disable, basic"):
        load_runner(mlp_model_dir, "ort-cpu", optimization="fastest")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CudaGraphWarning
        with pytest.raises(ConfigError, match="unknown optimization level 'fastest'"):
            OrtBoundCpuRunner(mlp_model_dir, cuda_graph=True, optimization="fastest")
    with load_runner(mlp_model_dir, "ort-cpu", threads=1, spinning=False, optimization="disable") as plain:
        np.testing.assert_allclose(plain.encode(images)[0], ort.encode(images)[0], rtol=0, atol=1e-5)


def test_session_builder_refuses_a_graph_file_with_other_names(mlp_model_dir):
    """A graph file that is not the manifest's (here the decoder loaded as the encoder) fails by its names."""
    manifest = read_manifest(mlp_model_dir)
    decoder = mlp_model_dir / manifest.graph("decoder").file
    with pytest.raises(ModelFormatError, match=r"has inputs \['z'\] and outputs \['images'\], the manifest "
                                               r"says \['images'\] and \['mu', 'logvar'\]"):
        build_session(str(decoder), manifest.graph("encoder"), decoder, backend="ort-cpu", provider=CPU,
                      options={})
    with pytest.raises(ModelFormatError, match=r"onnxruntime \(ort-cpu\) cannot load .*encoder.onnx"):
        build_session(b"not an onnx model", manifest.graph("encoder"), mlp_model_dir / "encoder.onnx",
                      backend="ort-cpu", provider=CPU, options={})


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="this onnxruntime has a CUDA EP: the CPU fallback cannot be provoked here")
def test_a_cuda_session_never_falls_back_to_the_cpu_silently(mlp_model_dir):
    """Where onnxruntime cannot start the CUDA EP it runs the session on the CPU EP with a warning; a session
    asked for on the CUDA EP refuses that with MissingBackendError (ort-cpu is the CPU backend)."""
    manifest = read_manifest(mlp_model_dir)
    encoder = mlp_model_dir / manifest.graph("encoder").file
    with pytest.warns(UserWarning, match="Specified provider 'CUDAExecutionProvider' is not in available"), \
            pytest.raises(MissingBackendError, match="backend 'ort-cuda' could not start the CUDA execution "
                                                     "provider.*use --backend ort-cpu"):
        build_session(str(encoder), manifest.graph("encoder"), encoder, backend="ort-cuda", provider=CUDA,
                      options={})

@pytest.mark.parametrize("cuda_graph", [False, True])
def test_the_bound_runner_says_whether_a_graph_runs_in_cuda_graph_mode(mlp_model_dir, cuda_graph):
    with OrtBoundCpuRunner(mlp_model_dir, cuda_graph=cuda_graph) as runner:
        assert runner.uses_cuda_graph("encoder") is cuda_graph
        assert runner.uses_cuda_graph("decoder") is cuda_graph


def _private_reaches(path: Path, package: Path) -> list[str]:
    """Where `path` uses another module's private name: `from vae_deploy.x import _y`, or `m._y` on a
    vae_deploy module `m` it imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vae_deploy"):
            folder = package.parent.joinpath(*node.module.split("."))
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno} imports {node.module}.{alias.name}")
                elif (folder / f"{alias.name}.py").is_file() or (folder / alias.name).is_dir():
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.name.startswith("vae_deploy.") and a.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    package = Path(vae_deploy.__file__).parent
    found = [hit for path in sorted(package.rglob("*.py")) for hit in _private_reaches(path, package)]
    assert not found, found


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
