"""Model folder -> TensorRT engines (TensorRT 10.x and 11.x), cached under engines/ by a full key.

UNVERIFIED in this project: TensorRT cannot be installed on any machine here, so this is written against
NVIDIA's TensorRT Python bindings and documentation (the 10.x release branches and 11.1 of
github.com/NVIDIA/TensorRT, python/src/infer/pyCore.cpp and include/NvInfer.h, and the 10.x -> 11.x
migration guide) and its GPU tests skip where TensorRT is missing or its major is not 10 or 11. The parts
that need no TensorRT are tested on every machine: the version gate (runtime/tensorrt_runner.py), the cache
key with its TF32 setting, staleness and profile shapes (runtime/engine_cache.py), which ONNX graph each
engine precision is built from and the Q/DQ check of int8 graphs (here), and the missing-TensorRT error.

Why strongly typed networks, on both majors: TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8, the
int8 calibrator, set_calibration_profile), and `pip install tensorrt` now brings 11. A strongly typed
network (NetworkDefinitionCreationFlag.STRONGLY_TYPED; a bit index that differs between majors, so it is
read from the enum, never hard-coded) exists in every 10.x and is accepted and ignored by 11, where strong
typing is always on; weak typing was already deprecated in 10.x (10.12) and implicit int8 calibration since
10.1. So one build path serves both majors, and each engine computes in exactly the types of the graph it
is built from, which is also what the export's parity check judged:
- fp32 engines: the fp32 graph (an fp16 folder's graph upcast by fp16_guard.upcast_to_fp32), with
  BuilderFlag.TF32 cleared (TensorRT enables it by default, which would make "fp32" engines TF32 ones);
  whether TF32 was allowed is part of the engine key (engine_cache.tf32_allowed).
- fp16 engines: the fp16 folder's graph itself (fp16 weights and compute, float32 I/O). An fp32 or int8
  folder has no fp16 graph: export with an fp16 profile (gpu-fp16, jetson-orin-fp16).
- int8 engines: an int8 folder's Q/DQ graph (explicit quantization; no calibration in TensorRT). TensorRT
  imports only symmetric signed int8 Q/DQ (zero points 0), so `qdq_problem` checks that before building;
  the cpu-int8 export (ONNX Runtime QDQ with uint8 activations and zero points) is refused with that reason.
  Unquantized layers stay fp32 in such a graph, so int8 engines need no fp16 guard and get no fp32 engine.
Pinning 10.x instead would have kept TensorRT's calibrator, but on an API line NVIDIA has deprecated and
that the default install no longer brings.

For each graph and precision:
1. The key (runtime/tensorrt_runner.engine_key): ONNX sha256, TensorRT version, GPU name and compute
   capability, precision, profile shapes (export profile ranges through the graph spec; video graphs with
   VIDEO_BATCH) and builder settings (workspace, optimization level, TF32). An engine stored under that key
   is reused; otherwise one is built. An engine built for another TensorRT, GPU, graph or profile has
   another key, so it is never loaded.
2. The device the key names is made current (cuda_device.make_current) before the builder runs: TensorRT
   builds on the current device, which would otherwise be device 0.
3. The strongly typed network is parsed from the graph chosen above; one optimization profile (min/opt/max
   of every input, state tensors included), workspace limit and builder optimization level from the
   profile's [tensorrt] table.
4. A timing cache per TensorRT version and GPU in engines/ is loaded before each build; one that TensorRT
   does not accept (set_timing_cache returns False: another device or version) is replaced by an empty
   cache. After a build the engine is written first, then the timing cache when the config still holds one
   (get_timing_cache() may return None), so a timing-cache problem never costs a built engine.
5. fp16 builds also build the fp32 engine of each graph, which the runner's fp16 guard falls back to.
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
from vae_deploy.runtime import cuda_device
from vae_deploy.runtime.engine_cache import (
    ENGINE_DIR,
    StaleEngineError,
    default_precision,
    find_engine,
    write_engine,
)
from vae_deploy.runtime.manifest import Manifest, read_manifest
from vae_deploy.runtime.tensorrt_runner import (
    INSTALL,
    current_env,
    engine_key,
    import_tensorrt,
    tensorrt_unavailable_reason,
)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class EngineBuild:
    graph: str
    precision: str
    path: Path
    cached: bool  # True: an engine under the same key was already there
    seconds: float


def require_tensorrt():
    """The tensorrt module, or MissingBackendError saying what to install and what runs here instead."""
    purpose = f"building TensorRT engines needs {INSTALL} and an NVIDIA GPU"
    reason = tensorrt_unavailable_reason()
    if reason:
        from vae_deploy.runtime.registry import available_backends

        raise MissingBackendError(f"{purpose}: {reason} (backends available here: "
                                  f"{', '.join(available_backends()) or 'none'})")
    return import_tensorrt(purpose)


def timing_cache_path(model_dir: Path, env) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env.gpu_name).strip("-").lower()
    name = f"timing-trt{env.tensorrt_version}-sm{env.compute_capability}-{slug}.cache"
    return Path(model_dir) / ENGINE_DIR / name


# ---------------------------------------------------------------- which graph an engine is built from


def _constant_values(model) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs of a graph, by name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def qdq_problem(model) -> str | None:
    """Why TensorRT cannot import the Q/DQ graph `model` (onnx.ModelProto) as int8, or None.

    TensorRT's explicit quantization is symmetric and signed: every QuantizeLinear/DequantizeLinear must
    have an int8 zero point of all zeros (a QuantizeLinear without one produces uint8 unless its
    output_dtype says int8)."""
    from onnx import TensorProto

    values = _constant_values(model)
    nodes = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    if not nodes:
        return "it has no QuantizeLinear/DequantizeLinear nodes (not a Q/DQ int8 graph)"
    for node in nodes:
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        if len(node.input) < 3 or not node.input[2]:
            if node.op_type == "QuantizeLinear":
                dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
                if dtype != TensorProto.INT8:
                    return f"{where} has no zero point, so it quantizes to uint8 (TensorRT takes int8 only)"
            continue
        zero = values.get(node.input[2])
        if zero is None:
            return f"{where} has a zero point computed at run time (TensorRT needs a constant 0)"
        if zero.dtype != np.int8:
            return (f"{where} quantizes to {zero.dtype} (TensorRT takes symmetric int8 only: zero point 0 of "
                    f"type int8)")
        if np.any(zero != 0):
            return f"{where} has a nonzero zero point (TensorRT's quantization is symmetric: zero points 0)"
    return None


def engine_graph(model_dir: Path, manifest: Manifest, graph: str, precision: str) -> bytes:
    """The serialized ONNX graph a `precision` engine of `graph` is built from (see the module docstring),
    or ConfigError where this model folder has none."""
    path = Path(model_dir) / manifest.graph(graph).file
    folder = manifest.precision
    if precision == "fp32":
        if folder == "fp32":
            return path.read_bytes()
        if folder == "fp16":
            import onnx

            from vae_deploy.runtime.fp16_guard import upcast_to_fp32

            return upcast_to_fp32(onnx.load(str(path))).SerializeToString()
        raise ConfigError(f"fp32 TensorRT engines are built from an fp32 or fp16 model folder; {model_dir} "
                          f"is {folder} and holds only its Q/DQ graphs: build its int8 engines, or export "
                          f"the model again with an fp32 or fp16 profile")
    if precision == "fp16":
        if folder == "fp16":
            return path.read_bytes()
        raise ConfigError(f"fp16 TensorRT engines are built from an fp16 model folder (strongly typed "
                          f"networks compute in the graph's own types); {model_dir} is {folder}: export "
                          f"with --profile gpu-fp16 (or jetson-orin-fp16), or build {folder} engines")
    if precision == "int8":
        if folder != "int8":
            raise ConfigError(f"int8 TensorRT engines are built from an int8 model folder's Q/DQ graphs "
                              f"(explicit quantization); {model_dir} is {folder}")
        import onnx

        problem = qdq_problem(onnx.load(str(path)))
        if problem:
            raise ConfigError(f"TensorRT cannot build an int8 engine from {path}: {problem}; the cpu-int8 "
                              f"profile quantizes for ONNX Runtime on the CPU (uint8 activations), so run "
                              f"that folder with ort-cpu, or build fp16 engines from a gpu-fp16 export")
        return path.read_bytes()
    raise ConfigError(f"engine precision must be fp32, fp16 or int8, got {precision!r}")


# ---------------------------------------------------------------- building


def _attach_timing_cache(trt, config, path: Path, log: Callable[[str], None]):
    """Load the timing cache at `path` into `config`; one TensorRT refuses is replaced by an empty one."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if data:
        log(f"timing cache {path.name} does not match this TensorRT/GPU; starting an empty one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ModelFormatError(f"TensorRT {trt.__version__} refused an empty timing cache (see its log)")
    return cache


def _build(trt, logger, onnx_bytes: bytes, onnx_path: Path, key, timing_cache: Path,
           log: Callable[[str], None]) -> tuple[bytes, bytes | None]:
    """(serialized engine, serialized timing cache or None) of one strongly typed build. `onnx_path` is the
    folder's graph file: the parser reads external data (weights.bin) relative to it."""
    builder = trt.Builder(logger)
    # The flag's bit index differs between majors (2 in 9.x, 1 in 10.x, 0 in 11.x): read it from the enum.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # With external data the serialized graph holds only references (location, offset, length): the
    # parser finds the weights file from the graph's path, so the path goes with the bytes.
    if not parser.parse(onnx_bytes, path=str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFormatError(f"TensorRT cannot parse the {key.graph} graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(key.builder["workspace_mb"]) << 20)
    config.builder_optimization_level = int(key.builder["builder_optimization_level"])
    if not key.builder["tf32"]:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: "fp32" would otherwise mean TF32
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in key.profile.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    _attach_timing_cache(trt, config, timing_cache, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelFormatError(f"TensorRT failed to build the {key.precision} {key.graph} engine (see its "
                               f"log)")
    cache = config.get_timing_cache()
    timing = bytes(memoryview(cache.serialize())) if cache is not None else None
    return bytes(memoryview(serialized)), timing


def engine_precisions(precision: str, fp32_fallback: bool = True) -> list[str]:
    """The engines a build of `precision` makes: fp16 also builds fp32 for the fp16 guard's fallback."""
    return [precision] + (["fp32"] if fp32_fallback and precision == "fp16" else [])


def build_engines(model_dir: Path, precision: str | None = None,
                  ranges: dict[str, tuple[int, int, int]] | None = None, fp32_fallback: bool = True,
                  force: bool = False, device_id: int = 0,
                  log: Callable[[str], None] = lambda msg: None) -> list[EngineBuild]:
    """Build (or reuse) the TensorRT engines of every graph of a model folder; see the module docstring.

    precision: "fp32" | "fp16" | "int8" (default: fp16 where the export profile's tensorrt.fp16 is set);
    ranges: per-symbol (min, opt, max) instead of the manifest's export profile (the runner then needs the
    same `ranges` option); device_id: the CUDA device to build for (and whose name is in the key).
    """
    trt = require_tensorrt()
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    precision = precision or default_precision(manifest.export_profile)
    precisions = engine_precisions(precision, fp32_fallback)
    # Every graph's source up front, so a folder that cannot give one is refused before the first
    # (minutes-long) build rather than after it.
    sources = {(graph, p): engine_graph(model_dir, manifest, graph, p)
               for graph in manifest.graphs for p in precisions}
    env = current_env(trt, device_id)
    cuda_device.make_current(device_id)
    logger = trt.Logger(trt.Logger.WARNING)
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
            data, timing_data = _build(trt, logger, sources[graph, p], model_dir / manifest.graph(graph).file,
                                       key, timing, log)
            path = write_engine(model_dir, key, data)  # the engine first: it is what the build was for
            if timing_data is not None:
                write_bytes_atomic(timing, timing_data)
            else:
                log(f"{graph} {p}: TensorRT returned no timing cache; {timing.name} left as it was")
            results.append(EngineBuild(graph, p, path, False, time.perf_counter() - start))
    return results


def describe(results: list[EngineBuild]) -> list[dict[str, Any]]:
    return [{"graph": r.graph, "precision": r.precision, "file": r.path.name, "cached": r.cached,
             "seconds": round(r.seconds, 1)} for r in results]
