"""TensorRT engines: what can be checked without TensorRT (the version gate, the cache key with its TF32
setting, staleness, profile shapes and their size limits, which ONNX graph each engine precision is built
from, the Q/DQ check of int8 graphs, the errors where TensorRT is missing) runs everywhere; building and
running engines needs TensorRT 10.x or 11.x and a GPU and is skipped elsewhere with that reason. TensorRT
cannot be installed on this project's machines, so the TensorRT-marked tests have not run here (README: the
backend is unverified in this project's CI)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_support import cli_process

from vae_deploy.errors import ConfigError, MissingBackendError
from vae_deploy.export import graph_specs, load_profile
from vae_deploy.export.tensorrt_build import engine_graph, engine_precisions, qdq_problem
from vae_deploy.models import build_model
from vae_deploy.runtime import available_backends, load_runner, read_manifest
from vae_deploy.runtime.engine_cache import (
    VIDEO_BATCH,
    EngineEnv,
    StaleEngineError,
    engine_profile,
    engine_ranges,
    find_engine,
    tf32_allowed,
    write_engine,
)
from vae_deploy.runtime.fp16_guard import upcast_to_fp32
from vae_deploy.runtime.tensorrt_runner import (
    SUPPORTED_MAJORS,
    engine_key,
    tensorrt_problem,
    tensorrt_unavailable_reason,
    version_problem,
)

H100 = EngineEnv("10.8.0", "NVIDIA H100 80GB HBM3", "9.0")
NO_TENSORRT = tensorrt_unavailable_reason()  # not installed, or no GPU: the missing-TensorRT errors apply
TENSORRT_PROBLEM = tensorrt_problem()  # also an unsupported major: engines cannot be built or run here
DEFAULT_MODEL = Path(__file__).parents[2] / "vae_deploy" / "assets" / "default_model"


def needs_tensorrt(test):
    """TensorRT and a GPU: marked (tensorrt, gpu) and skipped with the reason where either is missing."""
    skip = pytest.mark.skipif(TENSORRT_PROBLEM is not None,
                              reason=f"TensorRT cannot run here: {TENSORRT_PROBLEM}")
    return pytest.mark.tensorrt(pytest.mark.gpu(skip(test)))


def gpu_fp16_ranges():
    return load_profile("gpu-fp16").ranges()


# ---------------------------------------------------------------- profile shapes from the export profile


def test_mlp_profile_shapes_follow_the_batch_range(mlp_model_fp16_dir):
    manifest = read_manifest(mlp_model_fp16_dir)
    ranges = gpu_fp16_ranges()
    assert engine_profile(manifest.graph("encoder"), ranges) == {
        "images": [[1, 1, 28, 28], [128, 1, 28, 28], [8192, 1, 28, 28]]}
    assert engine_profile(manifest.graph("decoder"), ranges) == {"z": [[1, 2], [128, 2], [8192, 2]]}


def test_video_profile_shapes_respect_strides_and_derive_the_decoder():
    kind, config = "causal3d", {"channels": 16, "fine_channels": 8, "latent_channels": 4, "downsample": 8,
                                "temporal_downsample": 2}
    model = build_model(kind, config)
    specs = graph_specs(kind, model.config)
    ranges = gpu_fp16_ranges()  # frames 1/16/16, height 32/256/1088, width 32/256/1920, batch 1/128/8192
    enc = engine_ranges(specs["encoder"], ranges)
    assert enc["frames"] == (2, 16, 16)  # chunks must hold whole groups of 2 frames: min 1 -> 2
    assert enc["batch"] == VIDEO_BATCH == (1, 1, 2)
    assert enc["height"] == (32, 256, 1088) and enc["width"] == (32, 256, 1920)
    profile = engine_profile(specs["encoder"], ranges)
    assert profile["video"] == [[1, 2, 3, 32, 32], [1, 16, 3, 256, 256], [2, 16, 3, 1088, 1920]]
    # State tensors get the shapes the model's own shape function gives at each corner.
    for i, shape in enumerate(model.encoder_state_shapes(1, 32, 32)):
        assert profile[f"past_{i}"][0] == list(shape)
    for i, shape in enumerate(model.encoder_state_shapes(2, 1088, 1920)):
        assert profile[f"past_{i}"][2] == list(shape)
    dec = engine_profile(specs["decoder"], ranges)
    # latent_frames = (frames + 1) // 2, latent_h = height // 8: derived from the frame-unit ranges.
    assert dec["z"] == [[1, 1, 4, 4, 4], [1, 8, 4, 32, 32], [2, 8, 4, 136, 240]]
    for i, shape in enumerate(model.decoder_state_shapes(1, 32, 32)):
        assert dec[f"past_{i}"][1] == list(shape)


def test_odd_multiples_round_into_the_range():
    specs = graph_specs("frame", build_model("frame", {"channels": 8, "fine_channels": 8}).config)
    got = engine_ranges(specs["encoder"], {"height": (30, 100, 1000), "width": (8, 8, 8)})
    assert got["height"] == (32, 96, 1000) and got["width"] == (8, 8, 8)
    with pytest.raises(Exception, match="holds no multiple of 8"):
        engine_ranges(specs["encoder"], {"height": (9, 10, 15)})


def largest_activation(model_file: Path, shapes: dict[str, list[int]]) -> tuple[int, str]:
    """(elements, name) of the largest tensor of an ONNX graph fed inputs of `shapes` (ONNX Runtime's
    symbolic shape inference: every intermediate shape, no run)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(model_file))
    for graph_input in model.graph.input:
        for dim, size in zip(graph_input.type.tensor_type.shape.dim, shapes[graph_input.name], strict=True):
            dim.Clear()
            dim.dim_value = size
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False)
    sizes = []
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), f"{info.name}: shape not inferred"
        sizes.append((math.prod(d.dim_value for d in dims), info.name))
    return max(sizes)


@pytest.mark.parametrize(("profile", "max_bytes"), [("gpu-fp16", None), ("jetson-orin-fp16", 1.5 * 2**30)])
def test_video_engine_profiles_stay_within_tensorrt_limits(profile, max_bytes):
    """At the profile's largest shapes, no tensor of the default model (the widths every video recipe
    shares) reaches 2^31 elements, where many TensorRT layers stop before 10.10; on a Jetson, whose GPU
    shares 8-64 GB with the CPU and reserves activation memory for the largest shape, the largest fp16
    tensor stays under 1.5 GiB (a few are alive at once, on an 8 GB Orin Nano too)."""
    manifest = read_manifest(DEFAULT_MODEL)
    ranges = load_profile(profile).ranges()
    for graph in manifest.graphs:
        spec = manifest.graph(graph)
        largest = {name: three[2] for name, three in engine_profile(spec, ranges).items()}
        elements, name = largest_activation(DEFAULT_MODEL / spec.file, largest)
        assert elements < 2**31, (profile, graph, name, elements)
        if max_bytes is not None:
            assert 2 * elements <= max_bytes, (profile, graph, name, elements)
    # The caps keep what the pipeline and `verify` feed: 8-frame chunks, a 16-frame real clip, 1080p.
    assert ranges["frames"][2] >= 16 and VIDEO_BATCH[2] >= 2


# ---------------------------------------------------------------- the version gate


def test_only_tensorrt_10_and_11_are_accepted():
    assert SUPPORTED_MAJORS == (10, 11)
    for version in ("10.0.1.6", "10.8.0", "10.13.3.9", "11.0.0", "11.1.0.106"):
        assert version_problem(version) is None, version
    for version in ("8.6.1", "9.3.0.1", "12.0.0"):
        problem = version_problem(version)
        assert f"TensorRT {version} is not supported" in problem and "10.x and 11.x" in problem
        assert "pip install 'tensorrt>=10,<12'" in problem
    assert "cannot read the TensorRT version" in version_problem("unknown")
    # Where TensorRT is installed, its own version goes through the same gate (and skips the GPU tests).
    if NO_TENSORRT is None:
        import tensorrt

        assert TENSORRT_PROBLEM == version_problem(tensorrt.__version__)
    else:
        assert TENSORRT_PROBLEM == NO_TENSORRT


# ---------------------------------------------------------------- which graph each engine precision builds


def test_engines_are_built_from_the_graph_of_their_precision(mlp_model_dir, mlp_model_fp16_dir):
    fp16 = read_manifest(mlp_model_fp16_dir)
    for graph in fp16.graphs:
        path = mlp_model_fp16_dir / fp16.graph(graph).file
        assert engine_graph(mlp_model_fp16_dir, fp16, graph, "fp16") == path.read_bytes()
        # The fp16 guard's fp32 engine: the same graph computing in fp32 (strong typing obeys the types).
        upcast = onnx.load_from_string(engine_graph(mlp_model_fp16_dir, fp16, graph, "fp32"))
        assert upcast == upcast_to_fp32(onnx.load(str(path)))
        assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in upcast.graph.initializer)
    fp32 = read_manifest(mlp_model_dir)
    fp32_decoder = (mlp_model_dir / "decoder.onnx").read_bytes()
    assert engine_graph(mlp_model_dir, fp32, "decoder", "fp32") == fp32_decoder
    with pytest.raises(ConfigError, match="fp16 TensorRT engines are built from an fp16 model folder.*"
                                          "is fp32: export with --profile gpu-fp16"):
        engine_graph(mlp_model_dir, fp32, "decoder", "fp16")
    with pytest.raises(ConfigError, match="int8 TensorRT engines are built from an int8 model folder's Q/DQ"):
        engine_graph(mlp_model_fp16_dir, fp16, "decoder", "int8")
    assert engine_precisions("fp16") == ["fp16", "fp32"] and engine_precisions("fp16", False) == ["fp16"]
    assert engine_precisions("int8") == ["int8"] and engine_precisions("fp32") == ["fp32"]


def _quantized(source: Path, target: Path, activations, **options) -> onnx.ModelProto:
    """`source` statically quantized by ONNX Runtime's tool (QDQ format, int8 per-channel weights)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Feeds(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.feeds = iter([{"z": rng.standard_normal((16, 2)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(source), str(target), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=activations, weight_type=QuantType.QInt8, extra_options=options)
    return onnx.load(str(target))


def test_int8_engines_need_symmetric_int8_qdq_graphs(mlp_model_dir, tmp_path):
    from onnxruntime.quantization import QuantType

    source = mlp_model_dir / "decoder.onnx"
    assert "no QuantizeLinear/DequantizeLinear" in qdq_problem(onnx.load(str(source)))
    # The cpu-int8 recipe's form (uint8 activations with zero points): TensorRT cannot import it.
    uint8 = _quantized(source, tmp_path / "uint8.onnx", QuantType.QUInt8, QuantizeBias=False)
    assert "quantizes to uint8" in qdq_problem(uint8)
    # ... nor int32 biases (ONNX Runtime's default), which TensorRT's int8 Q/DQ does not take either.
    biased = _quantized(source, tmp_path / "biased.onnx", QuantType.QInt8, ActivationSymmetric=True,
                        WeightSymmetric=True)
    assert "quantizes to int32" in qdq_problem(biased)
    symmetric = _quantized(source, tmp_path / "int8.onnx", QuantType.QInt8, ActivationSymmetric=True,
                           WeightSymmetric=True, QuantizeBias=False)
    assert qdq_problem(symmetric) is None
    # In a model folder: an int8 folder gives its Q/DQ graph to an int8 engine and refuses a uint8 one.
    folder = tmp_path / "model"
    shutil.copytree(mlp_model_dir, folder)
    manifest = dataclasses.replace(read_manifest(folder), precision="int8")
    shutil.copyfile(tmp_path / "int8.onnx", folder / "decoder.onnx")
    assert engine_graph(folder, manifest, "decoder", "int8") == (tmp_path / "int8.onnx").read_bytes()
    with pytest.raises(ConfigError, match="fp32 TensorRT engines are built from an fp32 or fp16 model"):
        engine_graph(folder, manifest, "decoder", "fp32")
    shutil.copyfile(tmp_path / "uint8.onnx", folder / "decoder.onnx")
    with pytest.raises(ConfigError, match=r"cannot build an int8 engine from .*quantizes to uint8.*ort-cpu"):
        engine_graph(folder, manifest, "decoder", "int8")


# ---------------------------------------------------------------- the cache key and staleness


def key_for(manifest, graph="decoder", precision="fp16", env=H100, ranges=None):
    return engine_key(manifest, graph, precision, env, ranges)


def test_the_key_covers_every_field(mlp_model_fp16_dir):
    manifest = read_manifest(mlp_model_fp16_dir)
    base = key_for(manifest)
    assert base.onnx_sha256 == manifest.files["decoder.onnx"]
    assert base.builder == {"workspace_mb": 4096, "builder_optimization_level": 3, "tf32": True}
    assert base.digest() == key_for(manifest).digest()  # deterministic
    variants = [
        key_for(manifest, precision="fp32"),
        key_for(manifest, precision="int8"),
        key_for(manifest, graph="encoder"),
        key_for(manifest, env=dataclasses.replace(H100, tensorrt_version="10.9.0")),
        key_for(manifest, env=dataclasses.replace(H100, gpu_name="NVIDIA H200")),
        key_for(manifest, env=dataclasses.replace(H100, compute_capability="8.9")),
        key_for(manifest, ranges={"batch": (1, 64, 1024)}),
        dataclasses.replace(base, onnx_sha256="0" * 64),
        dataclasses.replace(base, builder={**base.builder, "workspace_mb": 1024}),
        dataclasses.replace(base, builder={**base.builder, "tf32": False}),
    ]
    digests = {base.digest()} | {k.digest() for k in variants}
    assert len(digests) == len(variants) + 1
    # Field order in the profile dict does not matter; values do.
    shuffled = dataclasses.replace(base, profile=dict(reversed(list(base.profile.items()))))
    assert shuffled.digest() == base.digest()
    with pytest.raises(Exception, match="precision must be one of"):
        dataclasses.replace(base, precision="bf16")


def test_fp32_engines_are_keyed_and_built_without_tf32(mlp_model_fp16_dir):
    """TensorRT allows TF32 by default (errors near 1e-3): fp32 engines clear it, and the key says so, so
    an engine built with TF32 is never taken for an fp32 one."""
    manifest = read_manifest(mlp_model_fp16_dir)
    assert not tf32_allowed("fp32") and tf32_allowed("fp16") and tf32_allowed("int8")
    with pytest.raises(ConfigError, match="precision must be one of"):
        tf32_allowed("bf16")
    fp32 = key_for(manifest, precision="fp32")
    assert fp32.builder["tf32"] is False and key_for(manifest).builder["tf32"] is True
    with_tf32 = dataclasses.replace(fp32, builder={**fp32.builder, "tf32": True})
    assert with_tf32.digest() != fp32.digest()


def test_a_cached_engine_is_found_and_a_stale_one_refused(mlp_model_fp16_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(mlp_model_fp16_dir, folder)
    manifest = read_manifest(folder)
    key = key_for(manifest)
    with pytest.raises(StaleEngineError, match=r"no TensorRT fp16 engine for the decoder in .*engines"):
        find_engine(folder, key)
    blob = b"serialized engine bytes as TensorRT returns them"
    path = write_engine(folder, key, blob)
    assert path.name == f"decoder-fp16-{key.digest()[:16]}.engine" and path.read_bytes() == blob
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"]["tensorrt_version"] == "10.8.0" and sidecar["digest"] == key.digest()
    assert find_engine(folder, key) == path
    # Another TensorRT, GPU or ONNX graph: the stored engine is stale, and the message says why.
    newer = key_for(manifest, env=EngineEnv("10.9.0", "NVIDIA H200", "9.0"))
    with pytest.raises(StaleEngineError, match=r"TensorRT 10\.8\.0 \(now 10\.9\.0\).*GPU NVIDIA H100 80GB "
                                               r"HBM3 \(now NVIDIA H200\).*rebuild with `vae-deploy export"):
        find_engine(folder, newer)
    reexported = dataclasses.replace(key, onnx_sha256="f" * 64)
    with pytest.raises(StaleEngineError, match=r"the ONNX graph .*re-exported"):
        find_engine(folder, reexported)
    # A modified engine file is refused even under the right key.
    path.write_bytes(blob + b"!")
    with pytest.raises(StaleEngineError, match="modified after it was built"):
        find_engine(folder, key)


def test_engine_files_do_not_disturb_the_model_folder(mlp_model_fp16_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(mlp_model_fp16_dir, folder)
    write_engine(folder, key_for(read_manifest(folder)), b"x")
    with load_runner(folder, "ort-cpu") as runner:  # engines/ is not part of the hashed files
        assert runner.decode(np.zeros((2, 2), np.float32)).shape == (2, 1, 28, 28)


# ---------------------------------------------------------------- where TensorRT is missing


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT is installed here")
def test_missing_tensorrt_is_one_clear_error(mlp_checkpoint, mlp_model_dir, tmp_path):
    from vae_deploy.export.tensorrt_build import build_engines, require_tensorrt

    with pytest.raises(MissingBackendError, match=r"needs TensorRT 10 or 11 .*pip install 'tensorrt>=10,<12'"
                                                  r".*backends available here: ort-cpu"):
        require_tensorrt()
    with pytest.raises(MissingBackendError, match="pip install 'tensorrt"):
        build_engines(mlp_model_dir)
    assert "tensorrt" not in available_backends()
    out = tmp_path / "model"
    command = [sys.executable, "-m", "vae_deploy", "export", str(mlp_checkpoint), "--out", str(out),
               "--engine", "--real", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: building TensorRT engines needs TensorRT")
    assert "available here" in lines[0]
    assert not out.exists()  # refused before exporting anything


def test_export_has_no_calibration_option(mlp_checkpoint, tmp_path):
    """int8 engines are built from Q/DQ graphs quantized at export: TensorRT calibrates nothing, so export
    has no --calibration; giving one is a usage mistake (Typer's message, exit 2), before any export."""
    out = tmp_path / "model"
    result = cli_process("export", mlp_checkpoint, "--out", out, "--engine", "--engine-precision", "int8",
                         "--calibration", tmp_path / "clip.mp4", "--real", "0", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "No such option: --calibration" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


# ---------------------------------------------------------------- with TensorRT (not run in this project)


@needs_tensorrt
@pytest.mark.parametrize(("precision", "source"), [("fp32", "mlp_model_dir"), ("fp16", "mlp_model_fp16_dir")])
def test_engines_build_cache_and_match_the_reference(precision, source, request, mnist_test_images, tmp_path):
    from vae_deploy.export import check_parity
    from vae_deploy.export.tensorrt_build import build_engines, timing_cache_path
    from vae_deploy.runtime.tensorrt_runner import current_env

    folder = tmp_path / "model"
    shutil.copytree(request.getfixturevalue(source), folder)
    built = build_engines(folder, precision)
    assert [(b.graph, b.precision) for b in built] == [(g, p) for g in ("encoder", "decoder")
                                                       for p in engine_precisions(precision)]
    assert not any(b.cached for b in built)
    assert all(b.cached for b in build_engines(folder, precision))  # same key: reused
    import tensorrt

    assert timing_cache_path(folder, current_env(tensorrt)).stat().st_size > 0
    with load_runner(folder, "tensorrt", precision=precision) as runner, load_runner(folder, "torch") as ref:
        report = check_parity(runner, ref, mnist_test_images, (1, 7, 128, 1000))
    # The graph spec's own floors: fp32 max abs <= 1e-5 (reachable only with TF32 cleared), fp16 decoder
    # PSNR >= 50 dB against the fp32 PyTorch reference.
    assert report.passed, report.failures()


@needs_tensorrt
def test_a_timing_cache_tensorrt_refuses_is_replaced_not_fatal(mlp_model_dir, tmp_path):
    import tensorrt

    from vae_deploy.export.tensorrt_build import build_engines, timing_cache_path
    from vae_deploy.runtime.tensorrt_runner import current_env

    folder = tmp_path / "model"
    shutil.copytree(mlp_model_dir, folder)
    cache = timing_cache_path(folder, current_env(tensorrt))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"not a timing cache")
    messages = []
    built = build_engines(folder, "fp32", log=messages.append)
    assert all(b.path.is_file() for b in built) and not any(b.cached for b in built)
    assert any("starting an empty one" in m for m in messages), messages
    assert cache.read_bytes() != b"not a timing cache"
