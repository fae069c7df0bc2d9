"""Model folder -> TensorRT engines (TensorRT 10 Python API), cached under engines/ by a full key.

UNVERIFIED in this project: TensorRT cannot be installed on any machine here, so this is written against
the TensorRT 10 documentation (Builder, INetworkDefinition via OnnxParser, IBuilderConfig with memory pool
limit, builder optimization level, FP16/INT8 flags, IOptimizationProfile, ITimingCache,
IInt8EntropyCalibrator2) and its tests skip where `import tensorrt` fails. The parts that need no TensorRT,
the cache key, staleness and profile shapes (runtime/engine_cache.py) and the missing-TensorRT error, are
tested on every machine.

For each graph and precision:
1. The key (runtime/tensorrt_runner.engine_key): ONNX sha256, TensorRT version, GPU name and compute
   capability, precision, profile shapes (export profile ranges through the graph spec; video graphs with
   VIDEO_BATCH) and builder settings. An engine stored under that key is reused; otherwise one is built.
   An engine built for another TensorRT, GPU, graph or profile has another key, so it is never loaded.
2. The network is parsed from the graph's ONNX file; for an fp16 model folder, from its fp32 version
   (fp16_guard.upcast_to_fp32), so TensorRT chooses each layer's precision itself from the FP16/INT8 flags
   and fp32 engines really are fp32.
3. One optimization profile (min/opt/max of every input, state tensors included), workspace limit and
   builder optimization level from the profile's [tensorrt] table, FP16 for fp16 and int8, INT8 with an
   entropy calibrator over real inputs (a calibration profile fixed at the calibration batch shape; its
   cache is kept in engines/, keyed by the graph's sha256), and a timing cache per TensorRT version and
   GPU in engines/, loaded before and saved after each build so rebuilds are fast.
4. fp16/int8 builds also build the fp32 engine of each graph, which the runner's fp16 guard falls back to.

Calibration inputs are real encoder inputs (MNIST test images for the MLP, decoded video frames for video
models); the decoder's are the reference encoder's means of the same inputs, and states are threaded
through a stream of chunks by the PyTorch reference so each chunk is calibrated with its real past.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, MissingBackendError, ModelFormatError
from vae_deploy.files import write_bytes_atomic
from vae_deploy.runtime.engine_cache import (
    ENGINE_DIR,
    StaleEngineError,
    default_precision,
    find_engine,
    write_engine,
)
from vae_deploy.runtime.manifest import Manifest, read_manifest
from vae_deploy.runtime.tensorrt_runner import INSTALL, current_env, engine_key, tensorrt_unavailable_reason

CALIBRATION_CHUNK = 8  # frames per video calibration batch (rounded to the model's temporal stride)
CALIBRATION_BATCH = 64  # images per MLP calibration batch


@dataclass
class EngineBuild:
    graph: str
    precision: str
    path: Path
    cached: bool  # True: an engine under the same key was already there
    seconds: float


def require_tensorrt():
    """The tensorrt module, or MissingBackendError saying what to install and what runs here instead."""
    reason = tensorrt_unavailable_reason()
    if reason:
        from vae_deploy.runtime.registry import available_backends

        raise MissingBackendError(f"building TensorRT engines needs {INSTALL} and an NVIDIA GPU: {reason} "
                                  f"(backends available here: {', '.join(available_backends()) or 'none'})")
    import tensorrt as trt

    if int(str(trt.__version__).split(".")[0]) < 10:
        raise MissingBackendError(f"building TensorRT engines needs TensorRT 10 or later, found "
                                  f"{trt.__version__}")
    return trt


def timing_cache_path(model_dir: Path, env) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env.gpu_name).strip("-").lower()
    name = f"timing-trt{env.tensorrt_version}-sm{env.compute_capability}-{slug}.cache"
    return Path(model_dir) / ENGINE_DIR / name


def _onnx_bytes(model_dir: Path, manifest: Manifest, graph: str) -> bytes:
    path = Path(model_dir) / manifest.graph(graph).file
    if manifest.precision != "fp16":
        return path.read_bytes()
    import onnx

    from vae_deploy.runtime.fp16_guard import upcast_to_fp32

    return upcast_to_fp32(onnx.load(str(path))).SerializeToString()


# ---------------------------------------------------------------- int8 calibration data


def calibration_batches(model_dir: Path, manifest: Manifest, encoder_inputs: np.ndarray
                        ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph, the calibration feeds (every input by name, state included) from real encoder inputs.

    The PyTorch reference runs the encoder over the inputs (in chunks, threading its state) and the decoder
    over the encoder's means, so every graph is calibrated on what it meets in use.
    """
    from vae_deploy.runtime.registry import get_backend

    encoder = manifest.graph("encoder")
    x = np.ascontiguousarray(encoder_inputs, dtype=np.float32)
    if encoder.stream_axis:
        if x.ndim != 5:
            raise ConfigError(f"video calibration input must be NTCHW, got shape {x.shape}")
        tf = encoder.dim_multiples.get(encoder.stream_axis, 1)
        chunk = max(tf, CALIBRATION_CHUNK // tf * tf)
        usable = x.shape[1] // chunk * chunk
        if usable == 0:
            raise ConfigError(f"int8 calibration needs at least {chunk} frames, got {x.shape[1]}")
        pieces = [x[:, i:i + chunk] for i in range(0, usable, chunk)]
    else:
        usable = x.shape[0] // CALIBRATION_BATCH * CALIBRATION_BATCH
        if usable == 0:
            raise ConfigError(f"int8 calibration needs at least {CALIBRATION_BATCH} images, got {x.shape[0]}")
        pieces = [x[i:i + CALIBRATION_BATCH] for i in range(0, usable, CALIBRATION_BATCH)]
    batches: dict[str, list[dict[str, np.ndarray]]] = {"encoder": [], "decoder": []}
    with get_backend("torch")(model_dir, manifest=manifest) as ref:
        latents = []
        for graph, feeds in (("encoder", pieces), ("decoder", latents)):
            spec = manifest.graph(graph)
            state = None
            for piece in feeds:
                out = ref.run(graph, [piece], past=state)
                env = spec.bind({spec.inputs[0].name: piece})
                past = state if state is not None else spec.zero_state(env)
                batches[graph].append({spec.inputs[0].name: piece, **past})
                state = {st.input: out[st.output] for st in spec.state} if spec.state else None
                if graph == "encoder":
                    latents.append(out[encoder.outputs[0].name].astype(np.float32))
    return batches


def _calibrator(trt, feeds: list[dict[str, np.ndarray]], cache: Path, device_id: int):
    from vae_deploy.runtime.cuda_device import DeviceBuffer

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._feeds = iter(feeds)
            self._buffers: dict[str, DeviceBuffer] = {}

        def get_batch_size(self):
            return 1  # explicit-batch networks: the batch is part of each input's shape

        def get_batch(self, names):
            batch = next(self._feeds, None)
            if batch is None:
                return None
            self._buffers = {n: DeviceBuffer.from_array(batch[n], device_id) for n in names}
            return [self._buffers[n].ptr for n in names]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data):
            write_bytes_atomic(cache, bytes(data))

    return Calibrator()


# ---------------------------------------------------------------- building


def _build(trt, logger, onnx_bytes: bytes, key, timing_cache: Path, calibration: list | None,
           calibration_cache: Path, device_id: int) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFormatError(f"TensorRT cannot parse the {key.graph} graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(key.builder["workspace_mb"]) << 20)
    config.builder_optimization_level = int(key.builder["builder_optimization_level"])
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 engines keep unquantizable layers in fp16
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in key.profile.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if key.precision == "int8":
        if not calibration:
            raise ConfigError(f"int8 engines need calibration inputs (real frames) for the {key.graph}")
        config.set_flag(trt.BuilderFlag.INT8)
        fixed = builder.create_optimization_profile()  # calibration runs at exactly the calibration shape
        for name, array in calibration[0].items():
            fixed.set_shape(name, array.shape, array.shape, array.shape)
        config.set_calibration_profile(fixed)
        config.int8_calibrator = _calibrator(trt, calibration, calibration_cache, device_id)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelFormatError(f"TensorRT failed to build the {key.precision} {key.graph} engine (see its "
                               f"log)")
    write_bytes_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def build_engines(model_dir: Path, precision: str | None = None,
                  ranges: dict[str, tuple[int, int, int]] | None = None,
                  calibration_inputs: np.ndarray | None = None, fp32_fallback: bool = True,
                  force: bool = False, device_id: int = 0,
                  log: Callable[[str], None] = lambda msg: None) -> list[EngineBuild]:
    """Build (or reuse) the TensorRT engines of every graph of a model folder; see the module docstring.

    precision: "fp32" | "fp16" | "int8" (default: fp16 where the export profile's tensorrt.fp16 is set);
    ranges: per-symbol (min, opt, max) instead of the manifest's export profile (the runner then needs the
    same `ranges` option); calibration_inputs: real encoder inputs for int8 (the model's layout, float32).
    """
    trt = require_tensorrt()
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    precision = precision or default_precision(manifest.export_profile)
    env = current_env(trt, device_id)
    logger = trt.Logger(trt.Logger.WARNING)
    precisions = [precision] + (["fp32"] if fp32_fallback and precision != "fp32" else [])
    calibration = (calibration_batches(model_dir, manifest, calibration_inputs)
                   if precision == "int8" and calibration_inputs is not None else {})
    timing = timing_cache_path(model_dir, env)
    results = []
    for graph in manifest.graphs:
        for p in precisions:
            key = engine_key(manifest, graph, p, env, ranges)
            start = time.perf_counter()
            if not force:
                try:
                    path = find_engine(model_dir, key)
                    results.append(EngineBuild(graph, p, path, True, 0.0))
                    log(f"{graph} {p}: cached {path.name}")
                    continue
                except StaleEngineError:
                    pass
            log(f"{graph} {p}: building (TensorRT {env.tensorrt_version}, {env.gpu_name})")
            calib_cache = model_dir / ENGINE_DIR / f"{graph}-int8-{key.onnx_sha256[:16]}.calib"
            data = _build(trt, logger, _onnx_bytes(model_dir, manifest, graph), key, timing,
                          calibration.get(graph) if p == "int8" else None, calib_cache, device_id)
            path = write_engine(model_dir, key, data)
            results.append(EngineBuild(graph, p, path, False, time.perf_counter() - start))
    return results


def calibration_from_video(path: Path, manifest: Manifest, max_frames: int = 32) -> np.ndarray:
    """Real frames for int8 calibration of a video model: (1, T, C, H, W) float32, H and W cropped to the
    model's spatial multiple."""
    from vae_deploy.video.io import open_source

    encoder = manifest.graph("encoder")
    with open_source(path) as source:  # RGB uint8 (H, W, 3) frames
        frames = source.read(max_frames)  # (T, H, W, 3)
    mh, mw = encoder.dim_multiples.get("height", 1), encoder.dim_multiples.get("width", 1)
    h, w = frames.shape[1] // mh * mh, frames.shape[2] // mw * mw
    if h == 0 or w == 0:
        raise ConfigError(f"{path}: frames of {frames.shape[1]}x{frames.shape[2]} are smaller than the "
                          f"model's {mh}x{mw} multiple")
    clip = frames[:, :h, :w].transpose(0, 3, 1, 2)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(clip)


def describe(results: list[EngineBuild]) -> list[dict[str, Any]]:
    return [{"graph": r.graph, "precision": r.precision, "file": r.path.name, "cached": r.cached,
             "seconds": round(r.seconds, 1)} for r in results]
