"""GPU backends (ort-cuda, torch-cuda, tensorrt), the device-state machinery and the fp16 guard.

Three groups:
- Everywhere: the GPU backends are registered, say what to install where they cannot run (one CLI line),
  and the fp16 guard's detection and fp16 -> fp32 fallback work (ort-cpu on a real overflowing export).
- Everywhere: the IO-binding runner of ort-cuda, run on the CPU execution provider (its binding and state
  logic does not depend on the device): parity, device-held streaming state, the static-buffer mode that
  CUDA graphs use (ping-pong state slots, eviction when streams interleave), option checking.
- With a GPU (marker gpu; skipped elsewhere): the same checks on CUDA against the PyTorch CPU reference,
  judged by the graph specs' own floors, the ones ort-cpu meets (MLP: fp32 max abs <= 1e-5, fp16 decoder
  PSNR >= 50 dB; video graphs: fp32 max abs <= 1e-4), with the parity report's verdict asserted. The H200
  run (benchmarks/results/gpu_check_h200.md) measured the MLP at 3.34e-6 (fp32) and 82.7-83.1 dB (fp16)
  on both CUDA backends, well inside them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from cpu_device_runners import OrtBoundCpuRunner, TorchCpuDeviceRunner

from vae_deploy.errors import ConfigError, MissingBackendError
from vae_deploy.export import check_parity, export_model, load_profile
from vae_deploy.runtime import available_backends, cuda_device, load_runner
from vae_deploy.runtime.device_runner import DeviceStream
from vae_deploy.runtime.fp16_guard import Fp16FallbackWarning, bad_values, inspect_arrays, upcast_to_fp32
from vae_deploy.runtime.ort_cuda import OrtState
from vae_deploy.runtime.ort_session import cuda_provider_options
from vae_deploy.runtime.registry import BACKENDS, runner_class
from vae_deploy.runtime.spec import TensorSpec
from vae_deploy.runtime.torch_cuda_runner import TorchState
from vae_deploy.video.metrics import psnr_from_mse

GPU_BACKENDS = tuple(name for name in BACKENDS if runner_class(name).uses_gpu)  # what each class declares
NO_GPU = cuda_device.unavailable_reason() is not None


def psnr(got: np.ndarray, ref: np.ndarray, peak: float) -> float:
    return psnr_from_mse(float(np.mean((got.astype(np.float64) - ref) ** 2)), peak)


# ---------------------------------------------------------------- tiny video model folders


@pytest.fixture(scope="module")
def causal_dir(tiny_video_model):
    """A tiny causal 3D VAE (temporal stride 2: encoder and decoder both carry state), exported fp32 (the
    shared export of tests/tiny_models.py's causal3d-t2)."""
    return tiny_video_model("causal3d-t2")


def clip(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (1, frames, 3, 32, 32)).astype(np.float32)


# ---------------------------------------------------------------- no GPU: clear refusals


@pytest.mark.skipif(not NO_GPU, reason="a CUDA driver is present: the no-GPU messages are not reachable")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends_refuse_without_a_gpu_saying_what_to_install(backend, mlp_model_dir):
    assert backend not in available_backends()
    with pytest.raises(MissingBackendError) as info:
        load_runner(mlp_model_dir, backend)
    message = str(info.value)
    assert f"backend {backend!r} is not available" in message and "install" in message
    assert "available here: ort-cpu, torch" in message


@pytest.mark.skipif(not NO_GPU, reason="a CUDA driver is present")
def test_cli_says_in_one_line_that_a_gpu_backend_is_missing(mlp_model_dir):
    for backend in ("torch-cuda", "tensorrt"):
        command = [sys.executable, "-m", "vae_deploy", "verify", str(mlp_model_dir), "--backend", backend,
                   "--real", "0"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: backend '{backend}' is not available") and "install" in lines[0]


def test_no_driver_means_no_device():
    if NO_GPU:
        assert cuda_device.device_count() == 0
        with pytest.raises(MissingBackendError, match="NVIDIA|CUDA"):
            cuda_device.DeviceBuffer((4,), np.float32)
    else:
        name, cc = cuda_device.device_identity(0)
        assert name and cc.count(".") == 1


# ---------------------------------------------------------------- the IO-binding runner on the CPU EP


def test_bound_runner_matches_the_reference(mlp_model_dir, mnist_test_images):
    with OrtBoundCpuRunner(mlp_model_dir) as runner, load_runner(mlp_model_dir, "torch") as ref:
        report = check_parity(runner, ref, mnist_test_images, (1, 7, 128))
    assert report.passed and max(c.max_abs for c in report.comparisons) <= 1e-5


@pytest.mark.parametrize("graph_mode", [False, True], ids=["session", "static-buffers"])
def test_bound_runner_streams_with_state_on_the_device(causal_dir, graph_mode):
    video = clip(14)
    with OrtBoundCpuRunner(causal_dir, cuda_graph=graph_mode) as runner, \
            load_runner(causal_dir, "ort-cpu") as cpu, load_runner(causal_dir, "torch") as ref:
        report = check_parity(runner, ref, None, (1, 2))
        assert report.passed and {c.case for c in report.comparisons} >= {"stream"}, report.failures()
        full_mu = cpu.encode(video)[0]
        stream = runner.open_stream()
        assert isinstance(stream, DeviceStream)
        parts = [stream.encode(video[:, i:i + 4])[0] for i in range(0, 12, 4)]
        parts.append(stream.encode(video[:, 12:])[0])
        np.testing.assert_allclose(np.concatenate(parts, axis=1), full_mu, rtol=0, atol=1e-5)
        held = stream._device["encoder"]
        assert isinstance(held, OrtState) and held.host is None  # on the device, never copied out
        # Runner.run with a numpy past returns the present state to the host.
        first = runner.run("encoder", [video[:, :4]])
        second = runner.run("encoder", [video[:, 4:8]],
                            past={s.input: first[s.output] for s in runner.graph("encoder").state})
        np.testing.assert_allclose(np.concatenate([first["mu"], second["mu"]], axis=1), full_mu[:, :4],
                                   rtol=0, atol=1e-5)


def test_static_buffers_keep_interleaved_streams_apart(causal_dir):
    """Two streams on one shape share one entry's buffers: each must still get its own result."""
    a, b = clip(8, seed=1), clip(8, seed=2)
    with OrtBoundCpuRunner(causal_dir, cuda_graph=True) as runner, load_runner(causal_dir, "ort-cpu") as cpu:
        want_a, want_b = cpu.encode(a)[0], cpu.encode(b)[0]
        sa, sb = runner.open_stream(), runner.open_stream()
        got_a, got_b = [], []
        for i in range(0, 8, 2):
            got_a.append(sa.encode(a[:, i:i + 2])[0])
            got_b.append(sb.encode(b[:, i:i + 2])[0])
        np.testing.assert_allclose(np.concatenate(got_a, axis=1), want_a, rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.concatenate(got_b, axis=1), want_b, rtol=0, atol=1e-5)
        entries = runner._execs["encoder"].entries
        assert len(entries) == 2  # the load-time probe shape and the 2-frame chunk shape


def test_device_runner_options_are_checked(mlp_model_dir):
    with pytest.raises(ConfigError, match="unknown option.*prefer_nchw"):
        OrtBoundCpuRunner(mlp_model_dir, prefer_nchw=True)
    with pytest.raises(ConfigError, match="conv_algo_search must be one of"):
        cuda_provider_options({"conv_algo_search": "fastest"})
    # Measured defaults (benchmarks/results/gpu_check_h200.md): fp16 NHWC + heuristic, fp32 NCHW + exhaustive.
    assert cuda_provider_options({}, precision="fp16") == {
        "device_id": "0", "use_tf32": "0", "prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC",
        "cudnn_conv_use_max_workspace": "1", "fuse_conv_bias": "1"}
    fp32 = cuda_provider_options({}, precision="fp32")
    assert (fp32["prefer_nhwc"], fp32["cudnn_conv_algo_search"], fp32["fuse_conv_bias"]) == (
        "0", "EXHAUSTIVE", "0")
    chosen = cuda_provider_options({"prefer_nhwc": True, "tf32": True, "conv_algo_search": "default"},
                                   {"enable_cuda_graph": "1"})
    assert (chosen["prefer_nhwc"], chosen["use_tf32"], chosen["cudnn_conv_algo_search"],
            chosen["enable_cuda_graph"]) == ("1", "1", "DEFAULT", "1")
    # Bias fusion only goes with NHWC fp16 (with NCHW fp16 cuDNN had no plan for it on the H200).
    assert cuda_provider_options({"prefer_nhwc": False}, precision="fp16")["fuse_conv_bias"] == "0"


def test_torch_device_runner_logic_on_the_cpu(mlp_model_dir, causal_dir, mnist_test_images):
    with TorchCpuDeviceRunner(mlp_model_dir) as runner, load_runner(mlp_model_dir, "torch") as ref:
        report = check_parity(runner, ref, mnist_test_images, (1, 7, 128))
        assert report.passed and max(c.max_abs for c in report.comparisons) <= 1e-5
        timed = runner.device_call("decoder", [np.zeros((8, 2), np.float32)])
        timed()
    with TorchCpuDeviceRunner(causal_dir) as runner, load_runner(causal_dir, "torch") as ref:
        report = check_parity(runner, ref, None, (1, 2))
        assert report.passed and any(c.case == "stream" for c in report.comparisons), report.failures()
        stream = runner.open_stream()
        stream.encode(clip(4))
        assert isinstance(stream._device["encoder"], TorchState)
    with pytest.raises(ConfigError, match="cuda_graph needs a CUDA device"):
        TorchCpuDeviceRunner(mlp_model_dir, cuda_graph=True)
    with pytest.raises(ConfigError, match="unknown option"):
        TorchCpuDeviceRunner(mlp_model_dir, compiled=True)


# ---------------------------------------------------------------- fp16 guard


def test_bad_values_rules():
    image = TensorSpec("video", ("batch",), value_range=(0.0, 1.0))
    latent = TensorSpec("mu", ("batch",))
    assert bad_values(image, 0.0, 1.0) is None and bad_values(latent, -3e4, 3e4) is None
    assert "non-finite" in bad_values(image, float("nan"), 1.0)
    assert "non-finite" in bad_values(latent, 0.0, float("inf"))
    assert "outside its range" in bad_values(image, -0.2, 1.0)
    assert "overflow edge" in bad_values(latent, -40000.0, 1.0)


def test_upcast_keeps_the_interface_and_computes_in_fp32(mlp_model_fp16_dir, mlp_model_dir, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnxconverter_common import float16

    fp16 = onnx.load(str(mlp_model_fp16_dir / "decoder.onnx"))
    wide = upcast_to_fp32(fp16)
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in wide.graph.initializer)
    assert [(i.name, i.type.tensor_type.elem_type) for i in wide.graph.input] == \
        [(i.name, i.type.tensor_type.elem_type) for i in fp16.graph.input]
    z = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    with load_runner(mlp_model_dir, "torch") as ref:
        want = ref.decode(z)
    session = ort.InferenceSession(wide.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"z": z})[0]
    assert psnr(got, want, 1.0) >= 60.0  # fp16-rounded weights only
    # A graph with float16 inputs and outputs keeps them: the Casts sit inside the graph.
    fp32 = onnx.load(str(mlp_model_dir / "decoder.onnx"))
    half_io = float16.convert_float_to_float16(fp32, keep_io_types=False)
    wide = upcast_to_fp32(half_io)
    assert wide.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert wide.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    out = ort.InferenceSession(wide.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"z": z.astype(np.float16)})[0]
    assert out.dtype == np.float16 and psnr(out, want, 1.0) >= 60.0


@pytest.fixture(scope="module")
def overflowing_fp16_dir(tmp_path_factory, mlp_checkpoint):
    """The MLP with its encoder's last layer scaled (weights still within fp16 range) so that real images
    give means near 1e5: fine in fp32, inf once the fp16 graph casts its result back to float16."""
    import torch

    from vae_deploy.models.checkpoint import load_model, save_model

    model, _ = load_model(mlp_checkpoint)
    with torch.no_grad():
        w = model.encoder[2].weight
        w.mul_(1e4 / w.abs().max())
    root = tmp_path_factory.mktemp("overflow")
    save_model(root / "ckpt", model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the export's own parity run meets the overflow too
        export_model(root / "ckpt", root / "model", load_profile("gpu-fp16"))
    return root / "model"


@pytest.mark.parametrize("runner_class", ["ort-cpu", "bound", "torch-device"])
def test_fp16_overflow_falls_back_to_fp32_with_one_warning(runner_class, overflowing_fp16_dir,
                                                           mnist_test_images):
    images = mnist_test_images[:200]

    def open_runner(**options):
        if runner_class == "bound":
            return OrtBoundCpuRunner(overflowing_fp16_dir, **options)
        if runner_class == "torch-device":  # the weights in half precision: the same overflow
            return TorchCpuDeviceRunner(overflowing_fp16_dir, **options)
        return load_runner(overflowing_fp16_dir, "ort-cpu", **options)

    with load_runner(overflowing_fp16_dir, "torch") as ref:
        want = ref.encode(images)[0]
    assert np.isfinite(want).all() and np.abs(want).max() > 7e4  # the fp32 reference is fine
    with open_runner(fp16_guard=False) as runner:
        unguarded = runner.encode(images)[0]
    assert inspect_arrays(runner.graph("encoder"), {"mu": unguarded}) is not None
    assert not np.isfinite(unguarded).all()
    with open_runner() as runner, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = runner.encode(images)[0]
        second = runner.encode(images[:50])[0]
        decoded = runner.decode(first[:, :2].clip(-3, 3))  # the decoder is untouched: still fp16
    fallbacks = [w for w in caught if issubclass(w.category, Fp16FallbackWarning)]
    assert len(fallbacks) == 1 and "encoder" in str(fallbacks[0].message), [str(w.message) for w in caught]
    assert runner.fp16_fallbacks.keys() == {"encoder"} and "non-finite" in runner.fp16_fallbacks["encoder"]
    peak = float(np.abs(want).max())
    assert psnr(first, want, peak) >= 45.0 and psnr(second, want[:50], peak) >= 45.0
    assert np.isfinite(decoded).all()


def test_fp16_guard_can_be_switched_off_only_on_purpose(mlp_model_fp16_dir, mnist_test_images):
    with load_runner(mlp_model_fp16_dir, "ort-cpu") as runner, warnings.catch_warnings():
        warnings.simplefilter("error", Fp16FallbackWarning)  # a healthy fp16 model never falls back
        runner.decode(runner.encode(mnist_test_images)[0])
        assert runner._guard.enabled and not runner._guard.fallen_back


# ---------------------------------------------------------------- with a GPU


gpu = pytest.mark.gpu


def _needs(backend: str):
    return pytest.mark.skipif(backend not in available_backends(),
                              reason=f"{backend} is not available here (needs an NVIDIA GPU)")


@gpu
@_needs("ort-cuda")
@pytest.mark.parametrize("options", [{}, {"prefer_nhwc": False}, {"cuda_graph": True}],
                         ids=["nhwc", "nchw", "cuda-graph"])
def test_ort_cuda_parity_floors(options, mlp_model_dir, mlp_model_fp16_dir, causal_dir, mnist_test_images):
    with load_runner(mlp_model_dir, "ort-cuda", **options) as runner, \
            load_runner(mlp_model_dir, "torch") as ref:
        report = check_parity(runner, ref, mnist_test_images, (1, 7, 128, 1000))
    assert report.passed and max(c.max_abs for c in report.comparisons) <= 1e-5, report.failures()
    with load_runner(causal_dir, "ort-cuda", **options) as runner, load_runner(causal_dir, "torch") as ref:
        report = check_parity(runner, ref, None, (1, 2))
    assert report.passed and max(c.max_abs for c in report.comparisons) <= 1e-4, report.failures()
    assert any(c.case == "stream" for c in report.comparisons)
    with load_runner(mlp_model_fp16_dir, "ort-cuda", **options) as runner, \
            load_runner(mlp_model_fp16_dir, "torch") as ref:
        report = check_parity(runner, ref, mnist_test_images, (1, 7, 128, 1000))
    assert report.passed, report.failures()
    assert min(c.psnr_db for c in report.comparisons if c.graph == "decoder") >= 50.0


@gpu
@_needs("torch-cuda")
@pytest.mark.parametrize("options", [{}, {"cuda_graph": True}], ids=["eager", "cuda-graph"])
def test_torch_cuda_parity_floors(options, mlp_model_dir, causal_dir, mnist_test_images):
    with load_runner(mlp_model_dir, "torch-cuda", **options) as runner, \
            load_runner(mlp_model_dir, "torch") as ref:
        report = check_parity(runner, ref, mnist_test_images, (1, 7, 128, 1000))
    assert report.passed and max(c.max_abs for c in report.comparisons) <= 1e-5, report.failures()
    with load_runner(causal_dir, "torch-cuda", **options) as runner, load_runner(causal_dir, "torch") as ref:
        report = check_parity(runner, ref, None, (1, 2))
    assert report.passed and max(c.max_abs for c in report.comparisons) <= 1e-4, report.failures()


@gpu
@_needs("ort-cuda")
def test_ort_cuda_matches_ort_cpu_on_a_stream(mlp_model_dir, mnist_test_images):
    with load_runner(mlp_model_dir, "ort-cuda") as cuda, load_runner(mlp_model_dir, "ort-cpu") as cpu:
        stream = cuda.open_stream()
        mu = np.concatenate([stream.encode(mnist_test_images[i:i + 100])[0] for i in range(0, 1000, 100)])
        np.testing.assert_allclose(mu, cpu.encode(mnist_test_images)[0], rtol=0, atol=1e-5)


@gpu
@_needs("ort-cuda")
def test_ort_cuda_fp16_overflow_falls_back(overflowing_fp16_dir, mnist_test_images, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(overflowing_fp16_dir, folder)
    with load_runner(folder, "torch") as ref:
        want = ref.encode(mnist_test_images[:200])[0]
    with load_runner(folder, "ort-cuda") as runner, pytest.warns(Fp16FallbackWarning, match="encoder"):
        got = runner.encode(mnist_test_images[:200])[0]
    assert psnr(got, want, float(np.abs(want).max())) >= 45.0
