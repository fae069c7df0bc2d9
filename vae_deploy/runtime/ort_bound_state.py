"""`ort-cpu` streams whose state stays in two ONNX Runtime buffers per state tensor (the `bind_state`
option, on by default).

A plain `session.run()` returns every output as a fresh array: each chunk of a causal stream allocated its
present_i tensors anew (from the session's arena, which keeps the high-water mark), copied them out as
numpy, and fed them back as the next chunk's past_i. Here each graph of a stream owns two buffers per state
tensor, allocated once: the chunk reads past_i from one and ORT writes present_i straight into the other
through IO binding, then the two swap. No state is allocated, copied or converted after the first chunk, and
a failed or rerun call (the fp16 guard) still has its past intact. A graph's output cannot be written over
its own input (ORT reads the past while it writes the present), hence two buffers, not one.

Only the data outputs (latents, frames) come back as numpy. `Runner.run(graph, inputs, past)` keeps the
numpy contract: binding is for streams.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vae_deploy.runtime.runner import Stream, check_held_state, check_outputs
from vae_deploy.runtime.spec import GraphSpec


class _Shape:
    """Stands for a state buffer in the output-shape check (which reads only `.shape`)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


class StateSlots:
    """One graph's state in a stream: `past` (what the next call reads) and `spare` (what it writes), one
    OrtValue per state tensor, swapped after each call."""

    def __init__(self, shapes: list[tuple[int, ...]], past: list, spare: list):
        self.shapes = [tuple(s) for s in shapes]
        self.past, self.spare = past, spare

    @classmethod
    def from_arrays(cls, ort, spec: GraphSpec, env: dict[str, int], arrays: list[np.ndarray]) -> StateSlots:
        """Slots whose past holds `arrays` (the zero state, or a first graph's present): wrapped, not
        copied (an OrtValue over a numpy array keeps that array alive)."""
        shapes = spec.state_shapes(env)
        past = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in arrays]
        spare = [ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(st.dtype).type)
                 for st, shape in zip(spec.state, shapes, strict=True)]
        return cls(shapes, past, spare)

    def swap(self) -> None:
        self.past, self.spare = self.spare, self.past


def bound_call(session, spec: GraphSpec, arrays: dict[str, np.ndarray], slots: StateSlots,
               run_options) -> dict[str, np.ndarray]:
    """One call of `session` (graph `spec`) reading the state from `slots.past` and writing it into
    `slots.spare` (not swapped here: a caller that reruns the call still has the past); the data outputs as
    numpy arrays of their own."""
    io = session.io_binding()
    for t in spec.inputs:
        io.bind_cpu_input(t.name, np.ascontiguousarray(arrays[t.name]))
    for t in spec.outputs:  # first: get_outputs() lists the outputs in the order they were bound
        io.bind_output(t.name, "cpu")  # ORT sizes these; they are handed out, so fresh ones each call
    for st, past, present in zip(spec.state, slots.past, slots.spare, strict=True):
        io.bind_ortvalue_input(st.input, past)
        io.bind_ortvalue_output(st.output, present)
    session.run_with_iobinding(io, run_options)
    values = io.get_outputs()[:len(spec.outputs)]
    return {t.name: v.numpy() for t, v in zip(spec.outputs, values, strict=True)}


class BoundStateStream(Stream):
    """A Stream of an ONNX Runtime CPU runner whose state stays in StateSlots (module docstring). The runner
    provides `_bound_call(spec, arrays, slots) -> data outputs` (with its fp16 fallback) and `_ort`."""

    def _hold(self, spec: GraphSpec, env: dict[str, int], state: dict[str, np.ndarray]) -> None:
        arrays = [state[st.input] for st in spec.state]
        self._state[spec.name] = StateSlots.from_arrays(self.runner._ort, spec, env, arrays)

    def _step(self, graph: str, chunk: Any) -> dict[str, np.ndarray]:
        runner = self.runner
        spec = runner.graph(graph)
        if not spec.state:
            return super()._step(graph, chunk)
        spec, arrays, env = runner._prepare(graph, chunk)
        slots = self._state.get(graph)
        if slots is None:
            zeros = spec.zero_state(env)
            slots = StateSlots.from_arrays(runner._ort, spec, env, [zeros[st.input] for st in spec.state])
        else:
            check_held_state(spec, env, slots.shapes)
        data = runner._bound_call(spec, arrays, slots)
        shown: dict[str, Any] = dict(data)
        shown.update({st.output: _Shape(shape) for st, shape in zip(spec.state, slots.shapes, strict=True)})
        check_outputs(runner.name, spec, env, shown)
        slots.swap()
        self._state[graph] = slots
        return data

    def state(self, graph: str) -> dict[str, np.ndarray] | None:
        """The state held after the last `graph` chunk, as numpy copies (for inspection and tests)."""
        slots = self._state.get(graph)
        if slots is None:
            return None
        spec = self.runner.graph(graph)
        return {st.input: np.array(v.numpy()) for st, v in zip(spec.state, slots.past, strict=True)}
