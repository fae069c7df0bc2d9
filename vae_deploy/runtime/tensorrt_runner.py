"""The `tensorrt` backend: serialized TensorRT engines from the model folder's engines/ cache.

UNVERIFIED in this project: TensorRT cannot be installed on any machine here (its PyPI packages download
from a vendor index no machine reaches), so this runner is written against the TensorRT 10.x and 11.x Python
bindings (ICudaEngine, IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3, all
present in both) and its tests skip where TensorRT is missing or its major version is not 10 or 11. What it
builds on is verified: the engine cache key and staleness logic (runtime/engine_cache.py, CPU tests), the
version gate (`version_problem`, CPU tests) and the device memory and stream helpers
(runtime/cuda_device.py, checked on the GPU machine by benchmarks/gpu_check.py).

Supported: TensorRT 10.x and 11.x (SUPPORTED_MAJORS). The builder makes strongly typed networks, the one
kind both build (export/tensorrt_build.py says why); another major is refused with one error naming what
to install, so a TensorRT 12 that removes more is never half-used.

Engines come from `vae-deploy export CKPT_DIR --out MODEL_DIR --engine` (export/tensorrt_build.py). The
runner computes the key of the current setup (the graph's sha256 from the manifest, TensorRT version, GPU
name and compute capability, precision, the profile shapes from the manifest's export profile and builder
settings, TF32 included) and loads only the engine stored under that key; anything else is a
StaleEngineError that says what differs and how to rebuild. Options:

    precision    "fp32" | "fp16" | "int8"; default fp16 where the export profile's tensorrt.fp16 is set
    ranges       {symbol: (min, opt, max)} the engines were built with, when not the manifest's profile
    fp16_guard   fp16 engines: NaN/inf/out-of-range outputs make that stage switch to its fp32 engine
                 (built alongside by the builder) with one warning; default True
    device_id    CUDA device; default 0. Its primary context is made current before any engine is
                 deserialized, so the engines, their execution contexts and the buffers share that GPU.

Device memory: cuda_device.DeviceBuffer (CUDA driver API via ctypes, so neither torch nor cuda-python is
needed). Inputs are uploaded per call, outputs downloaded; the streaming state stays in device buffers
between chunks: each call's present_i buffers become the next call's past_i.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vae_deploy.errors import InputShapeError, MissingBackendError, ModelFormatError
from vae_deploy.runtime import cuda_device
from vae_deploy.runtime.device_runner import DeviceRunner, DeviceState
from vae_deploy.runtime.engine_cache import (
    EngineEnv,
    EngineKey,
    builder_settings,
    default_precision,
    engine_profile,
    find_engine,
    profile_ranges,
)
from vae_deploy.runtime.fp16_guard import Fp16Guard, inspect_arrays
from vae_deploy.runtime.runner import module_available, named_inputs
from vae_deploy.runtime.spec import GraphSpec

SUPPORTED_MAJORS = (10, 11)
INSTALL = "TensorRT 10 or 11 for your CUDA version (pip install 'tensorrt>=10,<12')"


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None (cheap: does not import tensorrt, so it cannot see the
    version; `tensorrt_problem` does)."""
    if not module_available("tensorrt"):
        return "tensorrt is not installed"
    return cuda_device.unavailable_reason()


def version_problem(version: str) -> str | None:
    """Why this project cannot use TensorRT `version` ("10.8.0.43"), or None for a supported major."""
    head = str(version).split(".")[0]
    if not head.isdigit():
        return f"cannot read the TensorRT version {version!r}; install {INSTALL}"
    if int(head) not in SUPPORTED_MAJORS:
        return (f"TensorRT {version} is not supported (this project builds and runs engines with TensorRT "
                f"{' and '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}); install {INSTALL}")
    return None


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot run here, the version included, or None (imports tensorrt where installed)."""
    reason = tensorrt_unavailable_reason()
    if reason:
        return reason
    import tensorrt as trt

    return version_problem(trt.__version__)


def import_tensorrt(purpose: str):
    """The tensorrt module of a supported major, or MissingBackendError "<purpose>: <why not>"."""
    import tensorrt as trt

    problem = version_problem(trt.__version__)
    if problem:
        raise MissingBackendError(f"{purpose}: {problem}")
    return trt


def current_env(trt, device_id: int = 0) -> EngineEnv:
    name, cc = cuda_device.device_identity(device_id)
    return EngineEnv(str(trt.__version__), name, cc)


def engine_key(manifest, graph: str, precision: str, env: EngineEnv,
               ranges: dict[str, tuple[int, int, int]] | None = None) -> EngineKey:
    """The cache key of `graph`'s engine in a model folder, for the builder and the runner alike."""
    spec = manifest.graph(graph)
    ranges = ranges if ranges is not None else profile_ranges(manifest.export_profile)
    return EngineKey.for_graph(graph, manifest.files[spec.file], precision, env, engine_profile(spec, ranges),
                               builder_settings(manifest.export_profile, precision))


class TrtState(DeviceState):
    def __init__(self, shapes, buffers: list):
        super().__init__(shapes)
        self.buffers = buffers


class _Engine:
    """One deserialized engine with its execution context (profile 0)."""

    def __init__(self, trt, runtime, path, spec: GraphSpec):
        self.trt = trt
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelFormatError(f"TensorRT could not deserialize {path} (built by another TensorRT or for "
                                   f"another GPU?); rebuild it with `vae-deploy export ... --engine`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
            raise ModelFormatError(f"{path} has inputs {inputs} and outputs {outputs}, the manifest says "
                                   f"{spec.input_names} and {spec.output_names}")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.ranges = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)) for n in inputs}

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.ranges[name]
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
            raise InputShapeError(f"input '{name}' of shape {shape} is outside the engine's profile "
                                  f"{tuple(lo)}..{tuple(hi)}; rebuild the engine with a wider export profile")

    def run(self, stream, feeds: dict[str, Any], output_names: list[str], device_id: int) -> dict[str, Any]:
        """feeds: input name -> DeviceBuffer; returns output name -> new DeviceBuffer (after the stream)."""
        ctx = self.context
        for name, buf in feeds.items():
            self.check_shape(name, buf.shape)
            if not ctx.set_input_shape(name, buf.shape):
                raise InputShapeError(f"TensorRT refused shape {buf.shape} for input '{name}'")
            ctx.set_tensor_address(name, buf.ptr)
        outputs = {}
        for name in output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            outputs[name] = cuda_device.DeviceBuffer(shape, self.dtypes[name], device_id)
            ctx.set_tensor_address(name, outputs[name].ptr)
        if not ctx.execute_async_v3(stream.handle):
            raise ModelFormatError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
        stream.synchronize()
        return outputs


class TensorRTRunner(DeviceRunner):
    name = "tensorrt"
    install_hint = f"{INSTALL} and an NVIDIA GPU; engines from `vae-deploy export --engine`"
    uses_gpu = True
    OPTIONS = {"precision": str, "ranges": dict, "fp16_guard": bool, "device_id": int}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return tensorrt_unavailable_reason()

    def _load(self) -> None:
        trt = import_tensorrt(f"backend {self.name!r}")
        self._trt = trt
        self.device_id = int(self.options.get("device_id", 0))
        self.precision = str(self.options.get("precision", default_precision(self.manifest.export_profile)))
        self._ranges = self.options.get("ranges")
        self._env = current_env(trt, self.device_id)
        # TensorRT deserializes engines and allocates context memory on the current device: make it the one
        # the key names (and the buffers use) before anything is loaded.
        cuda_device.make_current(self.device_id)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._stream = cuda_device.CudaStream(self.device_id)
        # fp16 engines only: int8 engines come from Q/DQ graphs whose unquantized layers stay fp32
        # (strong typing), so there is no fp16 overflow to guard against and no fp32 engine is built.
        guard = self.precision == "fp16" and bool(self.options.get("fp16_guard", True))
        self._guard = Fp16Guard(self.name, guard)
        self._engines = {name: self._engine(name, self.precision) for name in self.manifest.graphs}

    def _engine(self, graph: str, precision: str) -> _Engine:
        key = engine_key(self.manifest, graph, precision, self._env, self._ranges)
        path = find_engine(self.model_dir, key)
        return _Engine(self._trt, self._runtime, path, self.graph(graph))

    # ------------------------------------------------------------------ DeviceRunner hooks

    def _upload(self, array: np.ndarray, dtype) -> Any:
        return cuda_device.DeviceBuffer.from_array(np.ascontiguousarray(array, dtype=dtype), self.device_id)

    def _state_from_host(self, spec, env, state) -> TrtState:
        engine = self._engines[spec.name]
        return TrtState(spec.state_shapes(env),
                        [self._upload(state[st.input], engine.dtypes[st.input]) for st in spec.state])

    def _state_to_host(self, spec, state: TrtState) -> dict[str, np.ndarray]:
        return {st.output: buf.download().astype(st.dtype, copy=False)
                for st, buf in zip(spec.state, state.buffers, strict=True)}

    def _step(self, engine: _Engine, spec: GraphSpec, arrays, env, past: TrtState | None):
        feeds = {t.name: self._upload(arrays[t.name], engine.dtypes[t.name]) for t in spec.inputs}
        if past is None:
            zeros = spec.zero_state(env)
            past_buffers = [self._upload(zeros[st.input], engine.dtypes[st.input]) for st in spec.state]
        else:
            past_buffers = past.buffers
        feeds.update({st.input: buf for st, buf in zip(spec.state, past_buffers, strict=True)})
        outs = engine.run(self._stream, feeds, spec.output_names, self.device_id)
        data = {t.name: outs[t.name].download().astype(t.dtype, copy=False) for t in spec.outputs}
        present = (TrtState(spec.state_shapes(env), [outs[st.output] for st in spec.state])
                   if spec.state else None)
        return data, present

    def _device_step(self, spec, arrays, env, past):
        graph = spec.name
        data, present = self._step(self._engines[graph], spec, arrays, env, past)
        if self._guard.watching(graph):
            reason = inspect_arrays(spec, data)
            if reason:
                self._guard.fall_back(graph, reason)
                self._engines[graph] = self._engine(graph, "fp32")
                data, present = self._step(self._engines[graph], spec, arrays, env, past)
        return data, present

    def device_call(self, graph, inputs):
        spec, arrays, env = self._prepare(graph, named_inputs(self.graph(graph), inputs))
        engine = self._engines[graph]
        feeds = {t.name: self._upload(arrays[t.name], engine.dtypes[t.name]) for t in spec.inputs}
        zeros = spec.zero_state(env)
        feeds.update({st.input: self._upload(zeros[st.input], engine.dtypes[st.input]) for st in spec.state})
        return lambda: engine.run(self._stream, feeds, spec.output_names, self.device_id)

    def _close(self) -> None:
        self._engines.clear()
        if getattr(self, "_stream", None) is not None:
            self._stream.close()
