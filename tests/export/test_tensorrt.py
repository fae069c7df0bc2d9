"""TensorRT engines: what can be checked without TensorRT (cache key, staleness, profile shapes, the error
where TensorRT is missing) runs everywhere; building and running engines needs TensorRT and a GPU and is
skipped elsewhere with that reason. TensorRT cannot be installed on this project's machines, so the
TensorRT-marked tests have not run here (README: the backend is unverified in this project's CI)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vae_deploy.errors import MissingBackendError
from vae_deploy.export import graph_specs, load_profile
from vae_deploy.models import build_model
from vae_deploy.runtime import available_backends, load_runner, read_manifest
from vae_deploy.runtime.engine_cache import (
    VIDEO_BATCH,
    EngineEnv,
    StaleEngineError,
    engine_profile,
    engine_ranges,
    find_engine,
    write_engine,
)
from vae_deploy.runtime.tensorrt_runner import engine_key, tensorrt_unavailable_reason

H100 = EngineEnv("10.8.0", "NVIDIA H100 80GB HBM3", "9.0")
NO_TENSORRT = tensorrt_unavailable_reason()


def needs_tensorrt(test):
    """TensorRT and a GPU: marked (tensorrt, gpu) and skipped with the reason where either is missing."""
    skip = pytest.mark.skipif(NO_TENSORRT is not None, reason=f"TensorRT cannot run here: {NO_TENSORRT}")
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
    ranges = gpu_fp16_ranges()  # frames 1/16/64, height 32/256/1088, width 32/256/1920, batch 1/128/8192
    enc = engine_ranges(specs["encoder"], ranges)
    assert enc["frames"] == (2, 16, 64)  # chunks must hold whole groups of 2 frames: min 1 -> 2
    assert enc["batch"] == VIDEO_BATCH == (1, 1, 4)
    assert enc["height"] == (32, 256, 1088) and enc["width"] == (32, 256, 1920)
    profile = engine_profile(specs["encoder"], ranges)
    assert profile["video"] == [[1, 2, 3, 32, 32], [1, 16, 3, 256, 256], [4, 64, 3, 1088, 1920]]
    # State tensors get the shapes the model's own shape function gives at each corner.
    for i, shape in enumerate(model.encoder_state_shapes(1, 32, 32)):
        assert profile[f"past_{i}"][0] == list(shape)
    for i, shape in enumerate(model.encoder_state_shapes(4, 1088, 1920)):
        assert profile[f"past_{i}"][2] == list(shape)
    dec = engine_profile(specs["decoder"], ranges)
    # latent_frames = (frames + 1) // 2, latent_h = height // 8: derived from the frame-unit ranges.
    assert dec["z"] == [[1, 1, 4, 4, 4], [1, 8, 4, 32, 32], [4, 32, 4, 136, 240]]
    for i, shape in enumerate(model.decoder_state_shapes(1, 32, 32)):
        assert dec[f"past_{i}"][1] == list(shape)


def test_odd_multiples_round_into_the_range():
    specs = graph_specs("frame", build_model("frame", {"channels": 8, "fine_channels": 8}).config)
    got = engine_ranges(specs["encoder"], {"height": (30, 100, 1000), "width": (8, 8, 8)})
    assert got["height"] == (32, 96, 1000) and got["width"] == (8, 8, 8)
    with pytest.raises(Exception, match="holds no multiple of 8"):
        engine_ranges(specs["encoder"], {"height": (9, 10, 15)})


# ---------------------------------------------------------------- the cache key and staleness


def key_for(manifest, graph="decoder", precision="fp16", env=H100, ranges=None):
    return engine_key(manifest, graph, precision, env, ranges)


def test_the_key_covers_every_field(mlp_model_fp16_dir):
    manifest = read_manifest(mlp_model_fp16_dir)
    base = key_for(manifest)
    assert base.onnx_sha256 == manifest.files["decoder.onnx"]
    assert base.builder == {"workspace_mb": 4096, "builder_optimization_level": 3}
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
    ]
    digests = {base.digest()} | {k.digest() for k in variants}
    assert len(digests) == len(variants) + 1
    # Field order in the profile dict does not matter; values do.
    shuffled = dataclasses.replace(base, profile=dict(reversed(list(base.profile.items()))))
    assert shuffled.digest() == base.digest()
    with pytest.raises(Exception, match="precision must be one of"):
        dataclasses.replace(base, precision="bf16")


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

    with pytest.raises(MissingBackendError, match=r"needs TensorRT 10 or later .*pip install tensorrt.*"
                                                  r"backends available here: ort-cpu"):
        require_tensorrt()
    with pytest.raises(MissingBackendError, match="pip install tensorrt"):
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


# ---------------------------------------------------------------- with TensorRT (not run in this project)


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_build_cache_and_match_the_reference(precision, mlp_model_fp16_dir, mnist_test_images,
                                                      tmp_path):
    from vae_deploy.export import check_parity
    from vae_deploy.export.tensorrt_build import build_engines

    folder = tmp_path / "model"
    shutil.copytree(mlp_model_fp16_dir, folder)
    built = build_engines(folder, precision)
    assert built and not any(b.cached for b in built)
    assert all(b.cached for b in build_engines(folder, precision))  # same key: reused
    with load_runner(folder, "tensorrt", precision=precision) as runner, load_runner(folder, "torch") as ref:
        report = check_parity(runner, ref, mnist_test_images, (1, 7, 128, 1000))
    decoder = [c for c in report.comparisons if c.graph == "decoder"]
    assert min(c.psnr_db for c in decoder) >= 45.0


@needs_tensorrt
def test_int8_engines_calibrate_on_real_images(mlp_model_dir, mnist_test_images, tmp_path):
    from vae_deploy.export.tensorrt_build import build_engines

    folder = tmp_path / "model"
    shutil.copytree(mlp_model_dir, folder)
    built = build_engines(folder, "int8", calibration_inputs=mnist_test_images)
    assert {b.precision for b in built} == {"int8", "fp32"}
    assert list((folder / "engines").glob("*-int8-*.calib"))
    with load_runner(folder, "tensorrt", precision="int8") as runner, load_runner(folder, "torch") as ref:
        images = mnist_test_images[:256]
        recon = runner.decode(ref.encode(images)[0])
        want = ref.decode(ref.encode(images)[0])
    # The issue sets no int8 floor; 30 dB is where MNIST digits stay visibly the same.
    assert 10 * np.log10(1.0 / np.mean((recon - want) ** 2)) >= 30.0
