"""The `ort-cuda` backend (OrtCudaRunner): ONNX Runtime on the CUDA execution provider with IO binding.

Sessions come from runtime/ort_session.py (the CUDA EP options prefer_nhwc, conv_algo_search, fuse_conv_bias,
tf32 and device_id are documented there, and so is the rule that a session never falls back to the CPU
silently); the fp16 fallback and what the CPU runner shares are runtime/ort_runner.py. This module adds:
- IO binding: inputs are copied to device buffers once per call, outputs are written to device buffers, and
  only the data outputs are copied back. The streaming state (present_i -> past_i) stays on the GPU between
  the chunks of a stream (runtime/device_runner.py); only frames/latents in and out cross the bus. Where a
  stream's state is at a given time is OrtState's docstring.
- Two ways to run a graph: `_SessionExec` (one session, dynamic shapes, outputs allocated by ORT) and, with
  the cuda_graph option, `_GraphExec` (a cache of `_GraphEntry`s: one session and static buffers per input
  shape, captured as CUDA graphs). Options (besides ort_session's and fp16_guard):
    cuda_graph        capture each fixed input shape as a CUDA graph and replay it (one session per shape,
                      dims fixed by free-dimension overrides, static device buffers; states ping-pong between
                      two captured graphs); for streams with a fixed chunk size (about 20% faster on the
                      fp16 FrameVAE, benchmarks/results/gpu_check_h200.md); default False, because each new
                      shape costs a session and a capture
    graph_cache       input shapes kept captured in cuda_graph mode (least recently used dropped); default 8
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict

import numpy as np

from vae_deploy.errors import ConfigError, MissingBackendError, VaeDeployError
from vae_deploy.runtime import cuda_device
from vae_deploy.runtime.device_runner import DeviceRunner, DeviceState
from vae_deploy.runtime.fp16_guard import inspect_arrays
from vae_deploy.runtime.ort_runner import OrtRunner
from vae_deploy.runtime.ort_session import CUDA, first_line, import_ort
from vae_deploy.runtime.spec import GraphSpec, eval_dim


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
        raise VaeDeployError(f"onnxruntime failed to run the {graph}: {first_line(exc)[:300]}") from exc


class CudaGraphWarning(UserWarning):
    """cuda_graph was asked for but a graph cannot be captured; that graph runs without it."""


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
        ort = import_ort()
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
    OPTIONS = {**OrtRunner.OPTIONS, "device_id": int, "prefer_nhwc": bool, "conv_algo_search": str,
               "fuse_conv_bias": bool, "cuda_graph": bool, "graph_cache": int, "tf32": bool}

    def _load(self) -> None:
        self.device_id = int(self.options.get("device_id", 0))
        self._graph_mode = bool(self.options.get("cuda_graph", False))
        capacity = int(self.options.get("graph_cache", 8))
        if capacity < 1:
            raise ConfigError(f"{self.name}: graph_cache must be at least 1, got {capacity}")
        self._capacity = capacity
        self._execs: dict[str, _SessionExec | _GraphExec] = {}
        super()._load()  # OrtRunner._load: the fp16 guard, then _load_graph for each graph

    def _load_graph(self, graph: str, path: str) -> None:
        self._execs[graph] = self._make_exec(graph, path)
        self._output_names[graph] = self.manifest.graph(graph).output_names

    def uses_cuda_graph(self, graph: str) -> bool:
        """Whether `graph` runs in cuda_graph mode (static buffers per input shape, captured as CUDA graphs
        on the CUDA device): False where the option is off or capture was not possible (CudaGraphWarning)."""
        return isinstance(self._execs[graph], _GraphExec)

    def _make_exec(self, graph: str, source: str | bytes):
        if self._graph_mode:
            exec_ = _GraphExec(self, graph, source, self._capacity, capture=self.device_type == "cuda")
            spec = self.manifest.graph(graph)
            try:  # capture needs every compute node on the GPU: find out now, not at the first chunk
                exec_.entry(spec, *self._example(spec))
                return exec_
            except (MissingBackendError, ConfigError):  # no GPU or bad options: not a capture problem
                raise
            except Exception as exc:
                exec_.close()
                # stacklevel 7 names the caller of load_runner (when loading: _load_graph,
                # OrtRunner._load, _load, Runner.__init__, load_runner).
                warnings.warn(f"{self.name}: cuda_graph is not possible for the {graph} "
                              f"({first_line(exc)}); it runs without CUDA graphs", CudaGraphWarning,
                              stacklevel=7)
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
        return import_ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type,
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
        self._loaded(graph)
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
        spec, arrays, env = self._prepare(graph, inputs)
        self._loaded(graph)
        return self._execs[graph].device_call(spec, arrays, env)

    def _close(self) -> None:
        for exec_ in self._execs.values():
            exec_.close()
        self._execs.clear()
        super()._close()


class OrtCudaRunner(OrtDeviceRunner):
    name = "ort-cuda"
    install_hint = "onnxruntime-gpu with a CUDA device (pip install onnxruntime-gpu)"
    uses_gpu = True
    execution_provider = CUDA

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason
        ort = import_ort()
        if CUDA not in ort.get_available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (the CPU-only package is installed)"
        return cuda_device.unavailable_reason()
