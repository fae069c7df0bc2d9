"""ONNX Runtime backends: `ort-cpu` and `ort-cuda` (one session per graph).

onnxruntime is imported here only, when one of these runners is built. Session settings are options:
    threads         intra-op threads (CPU EP); default 0 = ORT's choice, one per physical core
    spinning        idle intra-op threads spin briefly before sleeping (ORT's default; default True)
    optimization    graph optimization level: "disable" | "basic" | "extended" | "all" (default "all")
    fp16_guard      fp16 model folders: detect NaN/inf/out-of-range outputs and rerun that stage in fp32
                    from then on, with one warning (runtime/fp16_guard.py; default True)
CPU defaults chosen by measurement (benchmarks/results/runtime_speed.md, MLP VAE on the shared 2-core
machine): one thread per core with spinning was fastest or tied at batch 1 and 128, and clearly fastest at
batch 128 when the cores were free; at batch 8192 on cores busy with other processes, spinning lost to
threads=1 or spinning=False, which are options for that case.

`ort-cuda` (OrtCudaRunner) adds, on top of the CUDA execution provider:
- IO binding: inputs are copied to device buffers once per call, outputs are written to device buffers, and
  only the data outputs are copied back. The streaming state (present_i -> past_i) stays on the GPU between
  the chunks of a stream (runtime/device_runner.py); only frames/latents in and out cross the bus.
- CUDA EP options for conv nets, as runner options. Defaults depend on the folder's precision and were
  chosen by measurement (benchmarks/results/gpu_check_h200.md: FrameVAE, 256x256, 16 frames per call,
  H200, onnxruntime-gpu 1.31.1, decoder ms): fp16 NHWC+heuristic 1.34 (+bias fusion 1.23, +CUDA graph
  1.07) against NCHW+exhaustive 1.79 and NHWC+exhaustive 4.30 (cuDNN's frontend finds no plan for some
  NHWC convs and exhaustive search then lands on slow ones); fp32 NCHW+exhaustive 2.56 against
  NCHW+heuristic 3.33, NHWC+exhaustive 3.46, NHWC+heuristic 5.32.
    prefer_nhwc       NHWC convolutions; default True for fp16 folders, False for fp32
    conv_algo_search  cuDNN algorithm choice: "EXHAUSTIVE" (time each conv once) | "HEURISTIC" | "DEFAULT";
                      default "HEURISTIC" for fp16, "EXHAUSTIVE" for fp32
    fuse_conv_bias    let cuDNN's frontend fuse the bias add into NHWC convs; default True for fp16 NHWC
                      (with NCHW fp16 it failed at run time on the H200: cuDNN found no plan)
    cuda_graph        capture each fixed input shape as a CUDA graph and replay it (one session per shape,
                      dims fixed by free-dimension overrides, static device buffers; states ping-pong between
                      two captured graphs); for streams with a fixed chunk size (about 20% faster on the
                      fp16 FrameVAE); default False, because each new shape costs a session and a capture
    graph_cache       input shapes kept captured in cuda_graph mode (least recently used dropped); default 8
    tf32              TF32 convolutions/matmuls for fp32 graphs; default False (fp32 parity comes first)
    device_id         CUDA device; default 0
- It never falls back to the CPU silently: a session that does not run on the CUDA EP is an error.
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, MissingBackendError, ModelFormatError, VaeDeployError
from vae_deploy.runtime import cuda_device
from vae_deploy.runtime.device_runner import DeviceRunner, DeviceState, named_inputs
from vae_deploy.runtime.fp16_guard import Fp16Guard, inspect_arrays, upcast_to_fp32
from vae_deploy.runtime.runner import Runner, module_available
from vae_deploy.runtime.spec import GraphSpec, eval_dim

DEFAULT_CPU_THREADS = 0  # 0: ORT picks one per physical core
DEFAULT_SPINNING = True
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_PRELOADED: list[bool] = []  # preload_dlls() once per process


def _ort():
    import onnxruntime

    return onnxruntime


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _host(value) -> np.ndarray:
    """An OrtValue's contents as a numpy array of its own. For device memory numpy() copies to the host;
    for CPU memory it may return a view of the OrtValue's buffer, which a later run overwrites (static
    buffers) or frees (ORT-allocated outputs), so that view is copied."""
    array = value.numpy()
    if array.size and array.ctypes.data == value.data_ptr():
        array = array.copy()
    return array


def _run_bound(session, binding, run_options, graph: str) -> None:
    """run_with_iobinding with ORT's failures (e.g. a cuDNN configuration the options asked for that has
    no kernel) as one VaeDeployError line."""
    try:
        session.run_with_iobinding(binding, run_options)
    except Exception as exc:  # onnxruntime's pybind exception types
        raise VaeDeployError(f"onnxruntime failed to run the {graph}: {_first_line(exc)[:300]}") from None


class CudaGraphWarning(UserWarning):
    """cuda_graph was asked for but a graph cannot be captured; that graph runs without it."""


class OrtRunner(Runner):
    providers: list[Any] = ["CPUExecutionProvider"]
    # The files were hash-checked before this, so a session that will not build is a broken export on the
    # CPU provider, but most likely a missing CUDA library on the GPU one.
    session_error: type[Exception] = ModelFormatError

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not module_available("onnxruntime"):
            return "onnxruntime is not installed"
        return None

    def _session_options(self, overrides: Mapping[str, int] | None = None):
        ort = _ort()
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        level = self.options.get("optimization", "all")
        if level not in levels:
            raise ConfigError(f"unknown optimization level {level!r} (known: {', '.join(levels)})")
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.intra_op_num_threads = int(self.options.get("threads", DEFAULT_CPU_THREADS))
        so.inter_op_num_threads = 1  # graphs are chains of ops: no parallel branches to run
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Errors only: ORT's warnings (e.g. nodes placed on the CPU EP) are not actionable by our users.
        so.log_severity_level = 3
        spinning = bool(self.options.get("spinning", DEFAULT_SPINNING))
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        for name, value in (overrides or {}).items():
            # Fixed dims let ORT fold the shape arithmetic into constants (a static graph to capture).
            so.add_free_dimension_override_by_name(name, int(value))
        return so

    def _load(self) -> None:
        self._guard = Fp16Guard(self.name, self.manifest.precision == "fp16"
                                and bool(self.options.get("fp16_guard", True)))
        self._sessions = {}
        self._output_names = {}
        self._fallback_sessions = {}
        for name, spec in self.manifest.graphs.items():
            session = self._make_session(name, str(self.model_dir / spec.file))
            self._sessions[name] = session
            self._output_names[name] = [o.name for o in session.get_outputs()]

    def _make_session(self, name: str, source: str | bytes, overrides: Mapping[str, int] | None = None,
                      provider_extra: Mapping[str, str] | None = None, wrap_errors: bool = True):
        """A checked session for graph `name` from a file path or serialized model bytes.

        wrap_errors=False lets ORT's own exception through (a caller that has a way around it)."""
        ort = _ort()
        spec = self.manifest.graph(name)
        where = source if isinstance(source, str) else f"{self.model_dir / spec.file} (fp32 fallback)"
        try:
            session = ort.InferenceSession(source, sess_options=self._session_options(overrides),
                                           providers=self._providers(provider_extra))
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            if not wrap_errors:
                raise
            raise self.session_error(f"onnxruntime ({self.name}) cannot load {where}: {_first_line(exc)}"
                                     ) from None
        self._check_session(name, spec, session)
        return session

    def _providers(self, extra: Mapping[str, str] | None = None) -> list[Any]:
        return list(self.providers)

    def _check_session(self, name, spec, session) -> None:
        """The ONNX file must have exactly the spec's names, in order: a swapped file fails here."""
        got_in = [i.name for i in session.get_inputs()]
        got_out = [o.name for o in session.get_outputs()]
        if got_in != spec.input_names or got_out != spec.output_names:
            raise ModelFormatError(f"{self.model_dir / spec.file} has inputs {got_in} and outputs {got_out}, "
                                   f"the manifest says {spec.input_names} and {spec.output_names}")

    def _fallback_source(self, graph: str) -> bytes:
        """The fp32 version of an fp16 graph (fp16_guard.upcast_to_fp32), serialized for a session."""
        import onnx

        spec = self.manifest.graph(graph)
        return upcast_to_fp32(onnx.load(str(self.model_dir / spec.file))).SerializeToString()

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._output_names[graph]
        session = self._fallback_sessions.get(graph) or self._sessions[graph]
        outputs = dict(zip(names, session.run(names, feeds), strict=True))
        if self._guard.watching(graph):
            reason = inspect_arrays(self.graph(graph), outputs)
            if reason:
                self._guard.fall_back(graph, reason)
                session = self._make_session(graph, self._fallback_source(graph))
                self._fallback_sessions[graph] = session
                outputs = dict(zip(names, session.run(names, feeds), strict=True))
        return outputs

    def _close(self) -> None:
        self._sessions.clear()
        self._fallback_sessions.clear()


class OrtCpuRunner(OrtRunner):
    name = "ort-cpu"
    install_hint = "onnxruntime"


# ---------------------------------------------------------------- IO binding on device memory


class OrtState(DeviceState):
    """State tensors between chunks. Where they are:
    - `values`: OrtValues in device memory (written by a session that allocated them), or
    - `entry` + `slot`: a CUDA-graph entry's static state buffers (valid while the entry still holds them),
    - `host`: numpy arrays (given by the caller, or moved out when an entry needed its buffers back).
    """

    def __init__(self, shapes, values=None, host=None, entry: _GraphEntry | None = None, slot: int = 0):
        super().__init__(shapes)
        self.values = values
        self.host = host
        self.entry = entry
        self.slot = slot

    def in_entry(self, entry: _GraphEntry) -> bool:
        return self.entry is entry and entry.owner(self.slot) is self


class _SessionExec:
    """One session with dynamic shapes; outputs allocated by ORT on the device at each call."""

    def __init__(self, runner: OrtDeviceRunner, graph: str, source: str | bytes):
        self.runner = runner
        self.session = runner._make_session(graph, source)

    def step(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int], past: OrtState | None
             ) -> tuple[dict[str, np.ndarray], OrtState | None]:
        r = self.runner
        io = self.session.io_binding()
        for t in spec.inputs:
            io.bind_ortvalue_input(t.name, r._to_device(arrays[t.name]))
        if spec.state:
            values = r._zero_values(spec, env) if past is None else r._state_values(past)
            for st, value in zip(spec.state, values, strict=True):
                io.bind_ortvalue_input(st.input, value)
        for name in spec.output_names:
            io.bind_output(name, r.device_type, r.device_id)
        _run_bound(self.session, io, None, spec.name)
        outs = io.get_outputs()
        n = len(spec.outputs)
        data = {t.name: _host(outs[i]) for i, t in enumerate(spec.outputs)}
        present = OrtState(spec.state_shapes(env), values=list(outs[n:])) if spec.state else None
        return data, present

    def device_call(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int]):
        r = self.runner
        io = self.session.io_binding()
        for t in spec.inputs:
            io.bind_ortvalue_input(t.name, r._to_device(arrays[t.name]))
        for st, value in zip(spec.state, r._zero_values(spec, env), strict=True):
            io.bind_ortvalue_input(st.input, value)
        for name in spec.output_names:
            io.bind_output(name, r.device_type, r.device_id)
        session = self.session
        return lambda: session.run_with_iobinding(io)  # ORT synchronizes the outputs before returning

    def close(self) -> None:
        self.session = None


class _GraphEntry:
    """One fixed input shape in cuda_graph mode: its own session (dims fixed), static device buffers for
    every input and output, and two bindings whose state buffers are swapped (past in slot k, present
    written to slot 1 - k), each captured as its own CUDA graph (gpu_graph_id 1 and 2)."""

    def __init__(self, runner: OrtDeviceRunner, graph: str, source: str | bytes, spec: GraphSpec,
                 env: dict[str, int], capture: bool):
        ort = _ort()
        self.runner = runner
        overrides = {}
        for t in spec.all_inputs:
            for d in t.shape:
                if isinstance(d, str):
                    overrides[d] = eval_dim(d, env)
        extra = {"enable_cuda_graph": "1"} if capture else None
        self.session = runner._make_session(graph, source, overrides, extra, wrap_errors=False)
        dev, dev_id = runner.device_type, runner.device_id
        self.shapes = tuple(spec.state_shapes(env))

        def alloc(shape, dtype):
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype).type, dev, dev_id)

        self.inputs = {t.name: alloc(t.resolve(env), t.dtype) for t in spec.inputs}
        self.outputs = {t.name: alloc(t.resolve(env), t.dtype) for t in spec.outputs}
        slots = 2 if spec.state else 1
        self.state = [[alloc(shape, st.dtype) for st, shape in zip(spec.state, self.shapes, strict=True)]
                      for _ in range(slots)]
        self._owners: list[weakref.ref | None] = [None] * slots
        self.bindings, self.run_options = [], []
        for k in range(slots):
            io = self.session.io_binding()
            for name, value in self.inputs.items():
                io.bind_ortvalue_input(name, value)
            for name, value in self.outputs.items():
                io.bind_ortvalue_output(name, value)
            for i, st in enumerate(spec.state):
                io.bind_ortvalue_input(st.input, self.state[k][i])
                io.bind_ortvalue_output(st.output, self.state[1 - k][i])
            options = ort.RunOptions()
            if capture:
                options.add_run_config_entry("gpu_graph_id", str(k + 1))  # 0 is reserved by ORT
            self.bindings.append(io)
            self.run_options.append(options)

    def owner(self, slot: int) -> OrtState | None:
        ref = self._owners[slot]
        return ref() if ref is not None else None

    def evict(self, slot: int, keep: OrtState | None = None) -> None:
        """Before slot `slot` is overwritten: a live state held there moves to the host."""
        held = self.owner(slot)
        if held is not None and held is not keep and held.entry is self:
            held.host = [_host(v) for v in self.state[slot]]
            held.entry = None
        self._owners[slot] = None

    def evict_all(self) -> None:
        for slot in range(len(self._owners)):
            self.evict(slot)

    def place_past(self, spec: GraphSpec, past: OrtState | None) -> int:
        """Put `past` (None: zeros) into a state slot; return the slot the bound graph reads."""
        if not spec.state:
            return 0
        if past is not None and past.in_entry(self):
            return past.slot
        host = ([np.zeros(s, st.dtype) for st, s in zip(spec.state, self.shapes, strict=True)]
                if past is None else self.runner._state_host(past))
        self.evict(0, keep=past)
        for value, array in zip(self.state[0], host, strict=True):
            value.update_inplace(np.ascontiguousarray(array))
        return 0

    def step(self, spec: GraphSpec, arrays: dict[str, np.ndarray], past: OrtState | None
             ) -> tuple[dict[str, np.ndarray], OrtState | None]:
        for name, value in self.inputs.items():
            value.update_inplace(np.ascontiguousarray(arrays[name]))
        k = self.place_past(spec, past)
        if spec.state:
            self.evict(1 - k, keep=past)
        _run_bound(self.session, self.bindings[k], self.run_options[k], spec.name)
        data = {name: _host(value) for name, value in self.outputs.items()}
        if not spec.state:
            return data, None
        present = OrtState(self.shapes, entry=self, slot=1 - k)
        self._owners[1 - k] = weakref.ref(present)
        return data, present

    def close(self) -> None:
        self.evict_all()
        self.session = None
        self.bindings = []


class _GraphExec:
    """cuda_graph mode: one _GraphEntry per input shape, least recently used dropped past `capacity`."""

    def __init__(self, runner: OrtDeviceRunner, graph: str, source: str | bytes, capacity: int,
                 capture: bool):
        self.runner, self.graph, self.source = runner, graph, source
        self.capacity, self.capture = capacity, capture
        self.entries: OrderedDict[tuple, _GraphEntry] = OrderedDict()

    def entry(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int]) -> _GraphEntry:
        key = tuple(arrays[t.name].shape for t in spec.inputs)
        entry = self.entries.get(key)
        if entry is None:
            while len(self.entries) >= self.capacity:
                self.entries.popitem(last=False)[1].close()
            entry = _GraphEntry(self.runner, self.graph, self.source, spec, env, self.capture)
            self.entries[key] = entry
        self.entries.move_to_end(key)
        return entry

    def step(self, spec, arrays, env, past):
        return self.entry(spec, arrays, env).step(spec, arrays, past)

    def device_call(self, spec, arrays, env):
        entry = self.entry(spec, arrays, env)
        for name, value in entry.inputs.items():
            value.update_inplace(np.ascontiguousarray(arrays[name]))
        entry.place_past(spec, None)
        session, binding, options = entry.session, entry.bindings[0], entry.run_options[0]
        return lambda: session.run_with_iobinding(binding, options)

    def close(self) -> None:
        for entry in self.entries.values():
            entry.close()
        self.entries.clear()


class OrtDeviceRunner(DeviceRunner, OrtRunner):
    """ONNX Runtime with IO binding on `device_type` memory ("cuda" for ort-cuda).

    The binding logic does not depend on the device; the CPU variant (device_type "cpu") runs the same code
    on the CPU execution provider, where the tests exercise it without a GPU (no capture there).
    """

    device_type = "cuda"
    OPTIONS = ("threads", "spinning", "optimization", "fp16_guard", "device_id", "prefer_nhwc",
               "conv_algo_search", "fuse_conv_bias", "cuda_graph", "graph_cache", "tf32")

    def _load(self) -> None:
        unknown = sorted(set(self.options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"{self.name}: unknown option(s) {', '.join(unknown)} (known: "
                              f"{', '.join(self.OPTIONS)})")
        self.device_id = int(self.options.get("device_id", 0))
        self._guard = Fp16Guard(self.name, self.manifest.precision == "fp16"
                                and bool(self.options.get("fp16_guard", True)))
        self._graph_mode = bool(self.options.get("cuda_graph", False))
        capacity = int(self.options.get("graph_cache", 8))
        if capacity < 1:
            raise ConfigError(f"{self.name}: graph_cache must be at least 1, got {capacity}")
        self._capacity = capacity
        self._sessions = {}
        self._output_names = {}
        self._fallback_sessions = {}
        self._execs: dict[str, Any] = {}
        for name, spec in self.manifest.graphs.items():
            self._execs[name] = self._make_exec(name, str(self.model_dir / spec.file))
            self._output_names[name] = spec.output_names

    def _make_exec(self, graph: str, source: str | bytes):
        if self._graph_mode:
            exec_ = _GraphExec(self, graph, source, self._capacity, capture=self.device_type == "cuda")
            spec = self.manifest.graph(graph)
            try:  # capture needs every compute node on the GPU: find out now, not at the first chunk
                exec_.entry(spec, *self._example(spec))
                return exec_
            except MissingBackendError:
                raise
            except Exception as exc:
                exec_.close()
                warnings.warn(f"{self.name}: cuda_graph is not possible for the {graph} "
                              f"({_first_line(exc)}); it runs without CUDA graphs", CudaGraphWarning,
                              stacklevel=5)
        exec_ = _SessionExec(self, graph, source)
        if isinstance(source, str):
            self._sessions[graph] = exec_.session
        return exec_

    @staticmethod
    def _example(spec: GraphSpec) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        env = spec.example_env()
        return {t.name: np.zeros(t.resolve(env), t.dtype) for t in spec.inputs}, env

    # ------------------------------------------------------------------ device memory helpers

    def _to_device(self, array: np.ndarray):
        return _ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type,
                                                   self.device_id)

    def _zero_values(self, spec: GraphSpec, env: dict[str, int]) -> list:
        return [self._to_device(a) for a in spec.zero_state(env).values()]

    def _state_values(self, state: OrtState) -> list:
        """OrtValues holding `state` on the device (uploading a host-held state once)."""
        if state.entry is not None and state.in_entry(state.entry):
            return state.entry.state[state.slot]
        if state.values is None:
            state.values = [self._to_device(a) for a in state.host]
            state.host = None
        return state.values

    def _state_host(self, state: OrtState) -> list[np.ndarray]:
        if state.entry is not None and state.in_entry(state.entry):
            return [_host(v) for v in state.entry.state[state.slot]]
        if state.values is not None:
            return [_host(v) for v in state.values]
        return list(state.host)

    # ------------------------------------------------------------------ DeviceRunner hooks

    def _state_from_host(self, spec, env, state) -> OrtState:
        return OrtState(spec.state_shapes(env), host=[state[st.input] for st in spec.state])

    def _state_to_host(self, spec, state: OrtState) -> dict[str, np.ndarray]:
        return {st.output: a for st, a in zip(spec.state, self._state_host(state), strict=True)}

    def _device_step(self, spec, arrays, env, past):
        graph = spec.name
        outputs, present = self._execs[graph].step(spec, arrays, env, past)
        if self._guard.watching(graph):
            reason = inspect_arrays(spec, outputs)
            if reason:
                self._guard.fall_back(graph, reason)
                self._execs[graph].close()
                self._execs[graph] = self._make_exec(graph, self._fallback_source(graph))
                outputs, present = self._execs[graph].step(spec, arrays, env, past)
        return outputs, present

    def device_call(self, graph, inputs):
        spec, arrays, env = self._prepare(graph, named_inputs(self.graph(graph), inputs))
        return self._execs[graph].device_call(spec, arrays, env)

    def _close(self) -> None:
        for exec_ in self._execs.values():
            exec_.close()
        self._execs.clear()
        super()._close()


def conv_defaults(precision: str) -> tuple[bool, str]:
    """(prefer_nhwc, conv_algo_search) by model precision, as measured (module docstring)."""
    return (True, "HEURISTIC") if precision == "fp16" else (False, "EXHAUSTIVE")


def cuda_provider_options(options: Mapping[str, Any], extra: Mapping[str, str] | None = None,
                          precision: str = "fp32") -> dict[str, str]:
    """CUDA EP provider options from runner options (validated; values as the strings ORT takes)."""
    nhwc, search = conv_defaults(precision)
    nhwc = bool(options.get("prefer_nhwc", nhwc))
    search = str(options.get("conv_algo_search", search)).upper()
    if search not in CONV_ALGO_SEARCH:
        raise ConfigError(f"conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCH)}, got {search!r}")
    provider = {
        "device_id": str(int(options.get("device_id", 0))),
        # TF32 would trade fp32 parity (1e-5) for speed: off unless asked for.
        "use_tf32": "1" if options.get("tf32", False) else "0",
        "prefer_nhwc": "1" if nhwc else "0",
        "cudnn_conv_algo_search": search,
        "cudnn_conv_use_max_workspace": "1",  # lets cuDNN pick its fastest algorithms (ORT's default too)
        # Measured with NHWC fp16 only; with NCHW fp16 convs cuDNN's frontend found no plan (an error).
        "fuse_conv_bias": "1" if options.get("fuse_conv_bias", nhwc and precision == "fp16") else "0",
    }
    provider.update(extra or {})
    return provider


class OrtCudaRunner(OrtDeviceRunner):
    name = "ort-cuda"
    install_hint = "onnxruntime-gpu"
    session_error = MissingBackendError

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason
        ort = _ort()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (the CPU-only package is installed)"
        return cuda_device.unavailable_reason()

    def _providers(self, extra: Mapping[str, str] | None = None) -> list[Any]:
        ort = _ort()
        if hasattr(ort, "preload_dlls") and not _PRELOADED:
            # Loads the CUDA/cuDNN libraries shipped as pip packages (or with torch) before the first session.
            ort.preload_dlls()
            _PRELOADED.append(True)
        options = cuda_provider_options(self.options, extra, self.manifest.precision)
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]

    def _check_session(self, name, spec, session) -> None:
        super()._check_session(name, spec, session)
        if "CUDAExecutionProvider" not in session.get_providers():
            # ORT falls back to CPU when the CUDA libraries fail to load; a CUDA backend must not.
            raise MissingBackendError(
                "backend 'ort-cuda' could not start the CUDA execution provider (no GPU, or CUDA/cuDNN "
                "libraries not found); use --backend ort-cpu, or install onnxruntime-gpu with its CUDA "
                "libraries")
