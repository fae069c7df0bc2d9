"""One Runner contract for every backend (Polygraphy's BaseRunner is the model).

Public methods validate against the manifest's graph specs (names, dtype, shape, NaN) and manage the
streaming state; a backend implements only `_load()` (build sessions/engines), `_run(graph, feeds)` and
`_close()`. Arrays are numpy at this boundary; GPU backends keep device buffers inside
(runtime/device_runner.py). The checks that backends with their own plumbing reuse are public functions
here: named_inputs, check_outputs, check_held_state (a stream's state against the next chunk) and
check_options (unknown or ill-typed runner options).

What the rest of the package needs to know about a backend is declared on its class, in one place, so that
adding a backend is its module and one registry line: OPTIONS (the options it takes, checked here before
`_load`), uses_gpu (the Ray engine gives its actors a GPU), stream_threads (the streaming commands give it a
thread count: `thread_options`) and install_hint (what the registry says to install).

Layout: whatever the graph spec says (images NCHW float32 in [0, 1] for the MLP, video NTCHW); latents as
the encoder's first output.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vae_deploy.errors import ConfigError, InputShapeError, ModelFormatError, VaeDeployError
from vae_deploy.runtime.manifest import Manifest, read_manifest
from vae_deploy.runtime.spec import GraphSpec, format_shape

if TYPE_CHECKING:
    from vae_deploy.runtime.batched_stream import BatchedStreams


def module_available(name: str) -> bool:
    """Whether `name` can be imported, without importing it (cheap enough for listing backends)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


class Runner:
    """Base class: create from a model folder, call `encode`/`decode`, `open_stream()`, `close()`."""

    name = "base"  # registry name of the backend
    install_hint = ""  # what to install when the backend is missing (the registry's error names it)
    uses_gpu = False  # runs on a GPU: each Ray actor of encode-dataset then asks for one
    # Whether the streaming commands set its thread count when --threads is left out: ONNX Runtime's own
    # default (a spinning thread per core) fights the reading and writing stages for the cores.
    stream_threads = False
    # Options the streaming commands give it besides the thread count (ort-cpu: idle threads sleep instead
    # of spinning, so that reading and writing get the cores they need; benchmarks/results/stream_threads.md)
    stream_options: Mapping[str, Any] = {}
    # The options a backend takes, name -> type (or tuple of types); others are refused before _load, so a
    # misspelled option (threds=1) is an error, not silently ignored.
    OPTIONS: Mapping[str, type | tuple[type, ...]] = {}

    def __init__(self, model_dir: Path | str, manifest: Manifest | None = None, **options: Any):
        self.model_dir = Path(model_dir)
        check_options(self.name, options, self.OPTIONS)
        # A manifest handed in (export measuring parity before writing manifest.json) is trusted as is.
        self.manifest = manifest if manifest is not None else read_manifest(self.model_dir)
        self.options = options
        self._closed = False
        self._load()

    # ------------------------------------------------------------------ backend hooks

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (missing library or device), or None. Must be cheap."""
        return None

    @classmethod
    def thread_options(cls, threads: int | None, cpus: int) -> dict[str, int]:
        """Runner options for streaming: `threads` when given; else, for a backend with `stream_threads`,
        `cpus` (the CPUs the caller leaves this runner, at least 1); else none (the backend's own choice).
        A backend with `stream_threads` also gets its `stream_options`."""
        extra = dict(cls.stream_options) if cls.stream_threads else {}
        if threads is not None:
            return {"threads": threads, **extra}
        return {"threads": max(1, cpus), **extra} if cls.stream_threads else {}

    def call_limit(self, spec: GraphSpec) -> int | None:
        """At most how many steps of `spec`'s stream axis a stream feeds one call (a longer chunk is run in
        pieces, which gives the same outputs: the graph is causal); None: the whole chunk in one call."""
        return None

    def _load(self) -> None:
        raise NotImplementedError

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `graph` on validated feeds (data and state inputs by name); return every output by name."""
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # ------------------------------------------------------------------ public API

    def graph(self, name: str) -> GraphSpec:
        return self.manifest.graph(name)

    @property
    def fp16_fallbacks(self) -> dict[str, str]:
        """Graphs of an fp16 model that produced bad values and run in fp32 since, with the reason
        (runtime/fp16_guard.py); empty when none fell back or the backend runs no fp16 guard."""
        guard = getattr(self, "_guard", None)  # the Fp16Guard a backend with fp16 graphs keeps
        return dict(guard.fallen_back) if guard is not None else {}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
            past: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Validated call of one graph. `inputs` by name or in spec order; `past` None feeds the zero state.

        Returns every output by name, state outputs (present_i) included.
        """
        spec, arrays, env = self._prepare(graph, inputs)
        state = spec.zero_state(env) if past is None else _checked_state(spec, env, past)
        return self._execute(spec, arrays, env, state)

    def _prepare(self, graph: str, inputs: Any) -> tuple[GraphSpec, dict[str, np.ndarray], dict[str, int]]:
        """Validate the data inputs once: (spec, arrays by name, symbol values)."""
        if self._closed:
            raise VaeDeployError(f"{self.name} runner for {self.model_dir} is closed")
        spec = self.graph(graph)
        arrays = named_inputs(spec, inputs)
        return spec, arrays, spec.bind(arrays)

    def _execute(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int],
                 state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {t.name: arrays[t.name] for t in spec.inputs}
        feeds.update(state)
        outputs = self._run(spec.name, feeds)
        check_outputs(self.name, spec, env, outputs)
        return outputs

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Images (layout per the manifest) -> (mu, logvar), or (mu,) for encoders without a logvar: the
        encoder's results, no sampling. A whole clip for video models."""
        spec = self.graph("encoder")
        outputs = self.full_sequence("encoder", [images])
        return tuple(outputs[t.name] for t in spec.outputs)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latents -> images in [0, 1]."""
        spec = self.graph("decoder")
        outputs = self.full_sequence("decoder", [z])
        return outputs[spec.outputs[0].name]

    def full_sequence(self, graph: str, inputs: Any) -> dict[str, np.ndarray]:
        """The data outputs of `graph` over a whole input (a whole clip) in one go: a fresh stream fed it as
        one chunk, i.e. one call from the zero state, or the first rule then one call over the rest for
        graphs with a first chunk of their own (GraphSpec.first_graph). Backends whose model has its own
        whole-clip computation override this (the torch reference runner)."""
        spec = self.graph(graph)
        if not spec.first_graph:
            outputs = self.run(graph, inputs)
            return {t.name: outputs[t.name] for t in spec.outputs}
        return self.open_stream().step(graph, inputs)

    def open_stream(self) -> Stream:
        """A streaming session: chunks in order, state carried from one chunk to the next."""
        return Stream(self)

    def open_batched_streams(self, lengths: str = "group") -> BatchedStreams:
        """Many streams sharing calls along the batch axis, each with its own state (runtime/
        batched_stream.py); `lengths` says how chunks of different lengths meet ("group" or "pad")."""
        from vae_deploy.runtime.batched_stream import BatchedStreams  # it imports this module

        return BatchedStreams(self, lengths)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.model_dir}>"


class Stream:
    """Streaming session over a runner (the streaming contract: docs/architecture.md).

    Each graph keeps its own state: zeros before the first chunk, then each call's `present_i` becomes the
    next call's `past_i`. Chunks may differ in length along the stream axis, but not in the dimensions the
    state depends on (batch, spatial size): that needs a new stream.
    """

    def __init__(self, runner: Runner):
        self.runner = runner
        self._state: dict[str, dict[str, np.ndarray]] = {}

    def reset(self) -> None:
        self._state.clear()

    def step(self, graph: str, chunk: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
        """The next chunk of `graph`'s stream -> its data outputs for that chunk."""
        spec = self.runner.graph(graph)
        if spec.first_graph and not self._started(graph):
            return self._first_step(spec, chunk)
        return self._calls(spec, chunk)

    def _calls(self, spec: GraphSpec, chunk: Any) -> dict[str, np.ndarray]:
        """A chunk of `spec` in calls of at most the runner's call_limit steps, outputs joined."""
        limit = self.runner.call_limit(spec)
        arrays = named_inputs(spec, chunk) if limit else {}
        if not limit or not all(isinstance(arrays.get(t.name), np.ndarray) and arrays[t.name].ndim ==
                                len(t.shape) for t in spec.inputs):
            return self._step(spec.name, chunk)  # nothing to split, or input _step refuses in one line
        axes = {t.name: spec.input_stream_axis(t) for t in spec.inputs}
        length = arrays[spec.inputs[0].name].shape[axes[spec.inputs[0].name]]
        if length <= limit:
            return self._step(spec.name, arrays)
        pieces = []
        for start in range(0, length, limit):
            cut = {name: _slice(a, axes[name], start, start + limit) for name, a in arrays.items()}
            pieces.append(self._step(spec.name, cut))
        return {t.name: np.concatenate([p[t.name] for p in pieces], axis=spec.output_stream_axis(t))
                for t in spec.outputs}

    def _started(self, graph: str) -> bool:
        return graph in self._state

    def _hold(self, spec: GraphSpec, env: dict[str, int], state: dict[str, np.ndarray]) -> None:
        """Keep `state` (past_i by name, numpy) as what the next chunk of `spec` gets."""
        self._state[spec.name] = state

    def _step(self, graph: str, chunk: Any) -> dict[str, np.ndarray]:
        spec, arrays, env = self.runner._prepare(graph, chunk)
        past = self._state.get(graph)
        if past is None:
            past = spec.zero_state(env)
        else:
            check_held_state(spec, env, [past[st.input].shape for st in spec.state])
        outputs = self.runner._execute(spec, arrays, env, past)
        self._state[graph] = {st.input: outputs[st.output] for st in spec.state}
        return {t.name: outputs[t.name] for t in spec.outputs}

    def _first_step(self, spec: GraphSpec, chunk: Any) -> dict[str, np.ndarray]:
        """A stream's first chunk of a graph with a first rule: its first `first_length` steps run the
        first graph, which also gives the state; the rest of the chunk (if any) runs `spec` from there."""
        head, rest = split_first_chunk(spec, chunk)
        first, first_arrays, env = self.runner._prepare(spec.first_graph, head)
        outputs = self.runner._execute(first, first_arrays, env, {})
        self._hold(spec, env, {st.input: outputs[st.output] for st in spec.state})
        result = {t.name: outputs[t.name] for t in spec.outputs}
        if not rest:
            return result
        more = self._calls(spec, rest)
        return {t.name: np.concatenate([result[t.name], more[t.name]], axis=spec.output_stream_axis(t))
                for t in spec.outputs}

    def encode(self, chunk: np.ndarray) -> tuple[np.ndarray, ...]:
        """Next chunk of frames -> (mu, logvar) for that chunk."""
        return tuple(self.step("encoder", chunk).values())

    def decode(self, chunk: np.ndarray) -> np.ndarray:
        """Next chunk of latents -> frames for that chunk."""
        return next(iter(self.step("decoder", chunk).values()))


def split_first_chunk(spec: GraphSpec, chunk: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A stream's first chunk of a graph with a first rule, by input name: its first `first_length` steps
    (for the first graph) and the rest ({} when nothing is left). A shorter chunk is refused in one line:
    the first graph takes exactly that many steps (Stream and BatchedStreams share this rule)."""
    arrays = named_inputs(spec, chunk)
    n = spec.first_length
    axes = {t.name: spec.input_stream_axis(t) for t in spec.inputs}
    for t in spec.inputs:
        a = arrays[t.name]
        if not isinstance(a, np.ndarray) or a.ndim != len(t.shape) or a.shape[axes[t.name]] < n:
            raise InputShapeError(f"{spec.name} stream: the first chunk must hold at least {n} along "
                                  f"{spec.stream_axis} (the model's first rule), got "
                                  f"{getattr(a, 'shape', type(a).__name__)}")
    head = {name: _slice(a, axes[name], 0, n) for name, a in arrays.items()}
    if arrays[spec.inputs[0].name].shape[axes[spec.inputs[0].name]] == n:
        return head, {}
    return head, {name: _slice(a, axes[name], n, a.shape[axes[name]]) for name, a in arrays.items()}


def _slice(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """array[start:stop] along `axis`, a view."""
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]


def check_options(backend: str, options: Mapping[str, Any], known: Mapping[str, type | tuple[type, ...]]
                  ) -> None:
    """Refuse runner options a backend does not know (a typo would otherwise be ignored silently) and values
    of another type, in one line naming the valid options."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{backend}: unknown option {', '.join(map(repr, unknown))} (valid options: "
                          f"{', '.join(known) or 'none'})")
    for name, value in options.items():
        if not isinstance(value, known[name]):
            types = known[name] if isinstance(known[name], tuple) else (known[name],)
            raise ConfigError(f"{backend}: option {name!r} must be {' or '.join(t.__name__ for t in types)}, "
                              f"got {type(value).__name__} {value!r}")


def check_held_state(spec: GraphSpec, env: dict[str, int], held: Sequence[tuple[int, ...]]) -> None:
    """The state a stream holds from its last chunk (`held`: one shape per state tensor) must have the shapes
    this chunk needs (`env`); the batch or frame size cannot change mid-stream."""
    for st, shape, have in zip(spec.state, spec.state_shapes(env), held, strict=True):
        if have != shape:
            raise InputShapeError(
                f"{spec.name} stream: this chunk needs state {st.input} of shape {shape} but the stream "
                f"holds {have} (batch or frame size changed mid-stream; open a new stream)")


def named_inputs(spec: GraphSpec, inputs: Any) -> dict[str, np.ndarray]:
    """Data inputs by name, given by name (unknown names refused) or in spec order (count checked), or one
    array for a one-input graph."""
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - {t.name for t in spec.inputs})
        if unknown:
            raise InputShapeError(f"{spec.name} has no input {', '.join(unknown)} "
                                  f"(inputs: {', '.join(t.name for t in spec.inputs)})")
        return dict(inputs)
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
        inputs = [inputs]
    if len(inputs) != len(spec.inputs):
        raise InputShapeError(f"{spec.name} takes {len(spec.inputs)} input(s) "
                              f"({', '.join(t.name for t in spec.inputs)}), got {len(inputs)}")
    return {t.name: a for t, a in zip(spec.inputs, inputs, strict=True)}


def _checked_state(spec: GraphSpec, env: dict[str, int],
                   past: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    state = {}
    for st, shape in zip(spec.state, spec.state_shapes(env), strict=True):
        a = past.get(st.input)
        if not isinstance(a, np.ndarray) or a.dtype != np.dtype(st.dtype) or a.shape != shape:
            if a is None:
                got = "nothing"
            else:
                got = f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
            raise InputShapeError(f"{spec.name} state '{st.input}' must be {st.dtype} {shape} "
                                  f"{format_shape(st.shape)}, got {got}")
        state[st.input] = a
    return state


def check_outputs(backend: str, spec: GraphSpec, env: dict[str, int],
                  outputs: dict[str, np.ndarray]) -> None:
    """A backend must return exactly the spec's outputs with the spec's shapes: names first, then shapes."""
    if sorted(outputs) != sorted(spec.output_names):
        raise ModelFormatError(f"{backend} {spec.name} returned outputs {sorted(outputs)}, the manifest "
                               f"lists {spec.output_names}")
    for t in spec.all_outputs:
        try:
            expected = t.resolve(env)
        except KeyError:
            continue  # a dimension no input fixes (not in our specs, but allowed): nothing to compare
        if tuple(outputs[t.name].shape) != expected:
            raise ModelFormatError(f"{backend} {spec.name} output {t.name} has shape "
                                   f"{outputs[t.name].shape}, the manifest says {format_shape(t.shape)} = "
                                   f"{expected}")
