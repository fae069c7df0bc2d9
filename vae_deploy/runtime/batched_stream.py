"""Many streams of one runner in shared graph calls: `BatchedStreams`, each stream a slot along the batch
axis.

A `Stream` is one video: every chunk is its own call at batch 1. Here several streams (cameras, sessions of
a server) push a chunk each per round, and the round runs as few calls as their shapes allow: the streams'
chunks and their held `past_*` state are stacked along the batch axis, the graph runs once, and the
outputs and `present_*` are split back into each stream's slot. Every VAE graph computes its batch rows
independently, so each stream gets what it would get alone through `runner.open_stream()` (to float
rounding; docs/architecture.md, "Batched streams", says where the bits are equal).

    streams = runner.open_batched_streams()
    a, b = streams.add(), streams.add()              # stream ids
    out = streams.step("encoder", {a: chunk_a, b: chunk_b})
    out[a]["mu"]                                      # stream a's latents for its chunk
    streams.remove(b)                                 # at any chunk boundary; add() may join at any too

Each round, per stream, does what `Stream.step` does for that chunk, in the same pieces, so the calls a
stream takes part in have the same length along the stream axis as alone:
    - a stream's first chunk of a graph with a first rule (Wan) runs the first graph on its first
      `first_length` steps: all such streams of the round share those calls, before the steady calls;
    - the (rest of the) chunk runs the steady graph from the stream's state (zeros for a new stream), cut
      into pieces of at most the runner's `call_limit` steps (ort-cpu: one step per call);
    - the n-th pieces of all streams run together, one call per group of equal shapes but for the batch
      axis: streams of another frame size or chunk length cannot share a call (of another batch size can:
      a stream may hold several rows).
`lengths="pad"` lets chunks of different lengths share a call where that is exact: a stateless graph
(every step on its own: the frame model) takes the shorter chunks padded with their last step, whose
outputs are dropped. A stateful graph never pads: its state after a padded chunk would hold the padding.
benchmarks/results/batched_streams.md measures both: grouping was the faster in every case on 2 CPUs,
hence the default.

Inputs go through the runner's public `run(graph, inputs, past)`, so the runner checks the stacked inputs,
state and outputs as for any call, on any backend; each stream's chunk is checked on its own first (with
its id in the message) and against the state it holds, so a bad chunk is refused before any call and a
round either completes for every stream in it or changes no stream's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, InputShapeError, VaeDeployError
from vae_deploy.runtime.runner import Runner, check_held_state, named_inputs, split_first_chunk
from vae_deploy.runtime.spec import GraphSpec, TensorSpec, eval_dim

BATCH = "batch"  # the symbol of the axis streams are stacked along, in every data and state tensor
LENGTHS = ("group", "pad")  # how chunks of different lengths meet in a round (module docstring)


class StreamChunkError(InputShapeError):
    """One stream's chunk refused by its checks (before any call): the message names the stream;
    `stream` and `reason` keep them apart for a caller whose streams are parts of its own (tiled streams
    name the stream and tile instead)."""

    def __init__(self, stream: int, reason: str):
        super().__init__(f"stream {stream}: {reason}")
        self.stream, self.reason = stream, reason


@dataclass
class _Piece:
    """One stream's part of one call: the graph, its data inputs (this stream's batch rows) and symbols."""

    stream: int
    graph: str
    arrays: dict[str, np.ndarray]
    env: dict[str, int]


def _batch_axis(shape: tuple) -> int | None:
    return shape.index(BATCH) if BATCH in shape else None


def _batchable(spec: GraphSpec) -> bool:
    """Whether `spec`'s calls can stack streams: every data input, output and state tensor has the batch
    axis (a graph without one runs each stream in a call of its own)."""
    tensors = [*spec.inputs, *spec.outputs, *(st.as_input() for st in spec.state)]
    return all(_batch_axis(t.shape) is not None for t in tensors)


class BatchedStreams:
    """Streams of one runner whose chunks run in shared calls along the batch axis (module docstring).

    `add()` opens a stream (zero state; its first chunk of a graph with a first rule runs that rule) and
    returns its id; `remove(id)` closes one, freeing its state; `step(graph, {id: chunk})` runs one chunk
    for each stream named and returns `{id: {output name: array}}`. A stream left out of a round keeps its
    state for a later one. As for `Stream`, each graph has its own state per stream, and a stream's frame
    size and batch size cannot change mid-stream.
    """

    def __init__(self, runner: Runner, lengths: str = "group"):
        if lengths not in LENGTHS:
            raise ConfigError(f"batched streams: lengths must be one of {', '.join(LENGTHS)}, "
                              f"got {lengths!r}")
        self.runner = runner
        self.lengths = lengths
        # stream id -> graph -> past_i by name (that stream's rows, arrays of its own: removing a stream
        # frees its state, whatever the others hold)
        self._state: dict[int, dict[str, dict[str, np.ndarray]]] = {}
        self._next_id = 0

    # ------------------------------------------------------------------ membership

    def add(self) -> int:
        """Open a stream from its zero state; its id (never reused by this object)."""
        stream = self._next_id
        self._next_id += 1
        self._state[stream] = {}
        return stream

    def remove(self, stream: int) -> None:
        """Close a stream at a chunk boundary: its state is dropped and its id refused from now on."""
        self._check_open(stream)
        del self._state[stream]

    @property
    def ids(self) -> list[int]:
        return list(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, stream: object) -> bool:
        return stream in self._state

    def held(self, streams: list[int]) -> dict[int, dict[str, dict[str, np.ndarray]]]:
        """What `streams` hold now, for `restore`: a caller running one round in several `step`s (tiled
        streams, runtime/tiled_batched_streams.py) puts it back when a later step fails. A step replaces a
        stream's state and never changes it in place, so this keeps the arrays themselves."""
        return {stream: dict(self._state[stream]) for stream in streams}

    def restore(self, held: dict[int, dict[str, dict[str, np.ndarray]]]) -> None:
        """Put back what `held` returned, for the streams still open."""
        for stream, graphs in held.items():
            if stream in self._state:
                self._state[stream] = dict(graphs)

    def _check_open(self, stream: Any) -> None:
        if stream not in self._state:
            held = ", ".join(map(str, self._state)) or "none"
            raise VaeDeployError(f"batched streams: no open stream {stream!r} (open: {held}); "
                                 f"add() opens one")

    # ------------------------------------------------------------------ a round

    def step(self, graph: str, chunks: Mapping[int, Any]) -> dict[int, dict[str, np.ndarray]]:
        """One chunk of `graph` for each stream in `chunks` (stream id -> chunk, as `Stream.step` takes it)
        -> stream id -> that chunk's data outputs by name."""
        if not isinstance(chunks, Mapping):
            raise InputShapeError(f"batched streams: step takes {{stream id: chunk}}, got "
                                  f"{type(chunks).__name__}")
        spec = self.runner.graph(graph)
        for stream in chunks:
            self._check_open(stream)
        firsts: list[_Piece] = []
        pieces: dict[int, list[_Piece]] = {}
        for stream, chunk in chunks.items():  # every chunk checked before any call
            try:
                head, pieces[stream] = self._plan(spec, stream, chunk)
            except InputShapeError as err:
                raise StreamChunkError(stream, str(err)) from err
            firsts += head
        # The round's state, committed only when every call of it has run (a failed call changes nothing).
        state = {stream: self._state[stream].get(graph) for stream in chunks}
        outputs: dict[int, list[dict[str, np.ndarray]]] = {stream: [] for stream in chunks}
        if firsts:
            self._calls(spec, firsts, state, outputs, first=True)
        for n in range(max((len(p) for p in pieces.values()), default=0)):
            self._calls(spec, [p[n] for p in pieces.values() if n < len(p)], state, outputs, first=False)
        for stream in chunks:
            self._state[stream][graph] = state[stream] if state[stream] is not None else {}
        return {stream: _joined(spec, outputs[stream]) for stream in chunks}

    def encode(self, chunks: Mapping[int, np.ndarray]) -> dict[int, tuple[np.ndarray, ...]]:
        """Next chunk of frames per stream -> (mu, logvar) per stream."""
        return {s: tuple(out.values()) for s, out in self.step("encoder", chunks).items()}

    def decode(self, chunks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Next chunk of latents per stream -> frames per stream."""
        return {s: next(iter(out.values())) for s, out in self.step("decoder", chunks).items()}

    # ------------------------------------------------------------------ planning

    def _plan(self, spec: GraphSpec, stream: int, chunk: Any) -> tuple[list[_Piece], list[_Piece]]:
        """A stream's chunk as the calls `Stream.step` would make: the first graph's piece (a new stream of
        a graph with a first rule) and the steady graph's pieces, each checked against the spec."""
        held = self._state[stream].get(spec.name)
        arrays = named_inputs(spec, chunk)
        head: list[_Piece] = []
        if spec.first_graph and held is None:
            first, arrays = split_first_chunk(spec, arrays)
            _, first, env = self.runner._prepare(spec.first_graph, first)
            head.append(_Piece(stream, spec.first_graph, first, env))
            if not arrays:
                return head, []
        _, arrays, env = self.runner._prepare(spec.name, arrays)
        if held:
            check_held_state(spec, env, [held[st.input].shape for st in spec.state])
        return head, [_Piece(stream, spec.name, a, e) for a, e in self._pieces(spec, arrays, env)]

    def _pieces(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int]
                ) -> list[tuple[dict[str, np.ndarray], dict[str, int]]]:
        """The steady part of a chunk in pieces of at most the runner's call_limit (as Stream._calls cuts
        it, so each call has the length it has alone)."""
        limit = self.runner.call_limit(spec)
        if not limit or not spec.stream_axis:
            return [(arrays, env)]
        axes = {t.name: spec.input_stream_axis(t) for t in spec.inputs}
        length = env[spec.stream_axis]
        return [({name: _cut(a, axes[name], start, min(start + limit, length)) for name, a in arrays.items()},
                 env | {spec.stream_axis: min(limit, length - start)})
                for start in range(0, length, limit)]

    # ------------------------------------------------------------------ calls

    def _calls(self, spec: GraphSpec, pieces: list[_Piece], state: dict, outputs: dict, first: bool) -> None:
        """Run one piece per stream, in as few calls as their shapes allow; update `state` and `outputs`."""
        graph = self.runner.graph(pieces[0].graph)
        pad = self.lengths == "pad" and not graph.state and not first and bool(graph.stream_axis)
        batchable = _batchable(graph)
        groups: dict[tuple, list[_Piece]] = {}
        for piece in pieces:
            groups.setdefault(self._key(graph, piece, pad, batchable), []).append(piece)
        for group in groups.values():
            results = self._call(spec, graph, group, state, pad)
            for piece, result in zip(group, results, strict=True):
                present = {st.input: result.pop(st.output) for st in spec.state}
                state[piece.stream] = present
                outputs[piece.stream].append(result)

    @staticmethod
    def _key(graph: GraphSpec, piece: _Piece, pad: bool, batchable: bool) -> tuple:
        """Pieces with equal keys share a call: equal shapes but for the batch axis (and, padding, for the
        stream axis)."""
        if not batchable:
            return (piece.stream,)
        shapes = []
        for t in graph.inputs:
            shape = list(piece.arrays[t.name].shape)
            shape[_batch_axis(t.shape)] = -1
            if pad:
                shape[graph.input_stream_axis(t)] = -1
            shapes.append(tuple(shape))
        return tuple(shapes)

    def _call(self, spec: GraphSpec, graph: GraphSpec, group: list[_Piece], state: dict, pad: bool
              ) -> list[dict[str, np.ndarray]]:
        """One call of `graph` for the pieces of `group`: each piece's outputs and present_i by name."""
        if pad:
            longest = max(p.env[graph.stream_axis] for p in group)
            inputs = {t.name: np.concatenate([_padded(p.arrays[t.name], graph.input_stream_axis(t), longest)
                                              for p in group], axis=_batch_axis(t.shape))
                      for t in graph.inputs}
        else:
            inputs = {t.name: _stack([p.arrays[t.name] for p in group], t) for t in graph.inputs}
        past = None
        if graph.state:  # the steady graph (a first graph has no state inputs)
            rows = [state[p.stream] or spec.zero_state(p.env) for p in group]
            past = {st.input: _stack([r[st.input] for r in rows], st.as_input()) for st in graph.state}
        result = self.runner.run(graph.name, inputs, past)
        if len(group) == 1:  # nothing to split, nor padded (the longest chunk is its own)
            return [result]
        held = {st.output for st in spec.state}
        split = []
        start = 0
        for p in group:
            rows = slice(start, start + p.env[BATCH])
            start = rows.stop
            mine = {}
            for t in graph.all_outputs:
                a = _rows(result[t.name], _batch_axis(t.shape), rows)
                if pad:  # a stateless graph: every output is data, the padded steps' part dropped
                    axis = graph.output_stream_axis(t)
                    a = _cut(a, axis, 0, eval_dim(t.shape[axis], p.env))
                # state gets arrays of its own: a stream's slot must not keep the whole call's alive
                mine[t.name] = a.copy() if t.name in held else a
            split.append(mine)
        return split


def _stack(arrays: list[np.ndarray], tensor: TensorSpec) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=_batch_axis(tensor.shape))


def _rows(array: np.ndarray, axis: int, rows: slice) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = rows
    return array[tuple(index)]


def _cut(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """array[start:stop] along `axis`, a view."""
    return _rows(array, axis, slice(start, stop))


def _padded(array: np.ndarray, axis: int, length: int) -> np.ndarray:
    """`array` made `length` long along `axis` by repeating its last step (the extra outputs are dropped)."""
    short = length - array.shape[axis]
    if not short:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, short)
    return np.pad(array, widths, mode="edge")


def _joined(spec: GraphSpec, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A stream's outputs for its chunk: its pieces' outputs joined along the stream axis."""
    if len(parts) == 1:
        return parts[0]
    return {t.name: np.concatenate([p[t.name] for p in parts], axis=spec.output_stream_axis(t))
            for t in spec.outputs}
