"""Many tiled streams of one runner in shared graph calls: `TiledBatchedStreams`, the batched counterpart of
runtime/tiled_stream.py's `TiledStream` (no torch).

`TiledStream` runs each frame of one stream in spatial tiles, each tile a `Stream` of its own (its causal
state, its first-chunk rule). Here every (stream, tile) pair is a slot of one `BatchedStreams`
(runtime/batched_stream.py), so the tiles of a round, of one stream or of several, run in as few calls as
their shapes allow: tiles of equal shape are stacked along the batch axis and share a call.

    streams = TiledBatchedStreams(runner, TilePlanner(runner.manifest, TileRequest(64)))
    a, b = streams.add(), streams.add()               # stream ids
    out = streams.step("encoder", {a: chunk_a, b: chunk_b})
    out[a]["mu"]                                       # stream a's latents for its chunk, joined
    streams.remove(b)                                  # at any chunk boundary; add() may join at any too

A stream's tiles are planned at its first chunk of a graph, when its frame size and chunk length are known,
exactly as `TiledStream` plans them (`plan_tiles`): streams of different frame sizes each get their own
plan, and a stream whose frames need no tiles (the plan is None: a tile as large as the frame, `auto` and
the frame fits) is one slot, as in `BatchedStreams`. A later chunk of another frame size is refused, as
`TiledStream` refuses it. The windows are cut (`cut_tile`, with the halo) and the outputs joined
(`TileJoiner`: exact mode places each tile's core, blend mode cross-fades) by the same functions
`TiledStream` uses, tile by tile in the same order.

Exactness: each slot's outputs are what its tile's `Stream` gives alone (`BatchedStreams`: every VAE graph
computes its batch rows independently), and the cutting and joining are `TiledStream`'s own code, so each
stream's outputs equal that stream run alone through `TiledStream`: bit for bit on ort-cpu with one
intra-op thread (where `BatchedStreams` is bit-identical to a lone Stream; tests/runtime/
test_tiled_batched_streams.py measures it, exact and blended models), to float rounding elsewhere (a
backend that sums a batch in another order). In exact mode that is, as for `TiledStream`, the untiled
output within the graph's fp32 tolerance (max abs <= 1e-4 on the tests' models).

Memory: tiling bounds a call's working memory by the tile, but stacking every equal tile of a round in one
call would stack a whole frame again. `rows` bounds it: a round's tile slots are sorted by shape and run in
steps of at most `rows` batch rows each (None: no bound, every equal-shaped tile of the round in one call),
and `--tile auto`'s budget counts a call of `rows` tiles (video/multi_source.py passes its number of
sources: one tile per source per call, the rows an untiled call of every source stacks). A round run in
several steps is still all or nothing: when a step fails, the state the earlier steps advanced is put back
(`BatchedStreams.held`/`restore`), and a chunk refused by a check names its stream id (and tile).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, InputShapeError, VaeDeployError
from vae_deploy.runtime.batched_stream import BatchedStreams, StreamChunkError
from vae_deploy.runtime.runner import Runner, named_inputs
from vae_deploy.runtime.tile_plan import GraphTiles, TilePlanner
from vae_deploy.runtime.tiled_stream import (
    TileJoiner,
    check_frame_size,
    cut_tile,
    frame_input,
    plan_tiles,
    tile_windows,
)

# Tiles of a graph in parts (Wan's, split at latent resolution) run through TiledStream only, one stream at
# a time: the parts' shared calls across streams are not built.
SPLIT_NOT_BATCHED = ("this model tiles through graphs split at latent resolution, which several streams at "
                     "once do not do yet: run each source alone to tile it, or use --tile off")


@dataclass
class _Tiled:
    """One stream's tiles of one graph: the plan (None: whole frames), the frame size and a slot per tile."""

    tiles: GraphTiles | None
    size: tuple[int, int] | None
    slots: list[int] = field(default_factory=list)


class TiledBatchedStreams:
    """Streams of one runner whose frames run in tiles, the tiles of all of them in shared calls (module
    docstring). `planner` None: no stream is tiled (every stream one slot, as `BatchedStreams`); `lengths`
    as `BatchedStreams`'; `rows`: the most batch rows one call stacks (None: no bound).

    `add()` opens a stream and returns its id; `remove(id)` closes one, freeing its tiles' state;
    `step(graph, {id: chunk})` runs one chunk per stream named and returns `{id: {output name: array}}`,
    each joined from its tiles. A stream left out of a round keeps its state for a later one.
    """

    def __init__(self, runner: Runner, planner: TilePlanner | None, lengths: str = "group",
                 rows: int | None = None):
        if rows is not None and rows < 1:
            raise VaeDeployError(f"tiled batched streams: rows must be at least 1, got {rows}")
        self.runner = runner
        self.planner = planner if planner is not None and planner.active else None
        self.rows = rows
        self._slots = BatchedStreams(runner, lengths)
        self._graphs: dict[int, dict[str, _Tiled]] = {}  # stream id -> graph -> its tiles and slots
        self._owner: dict[int, tuple[int, int | None]] = {}  # slot -> (stream id, tile index or None)
        self._next_id = 0

    # ------------------------------------------------------------------ membership

    def add(self) -> int:
        """Open a stream from its zero state; its id (never reused by this object)."""
        stream = self._next_id
        self._next_id += 1
        self._graphs[stream] = {}
        return stream

    def remove(self, stream: int) -> None:
        """Close a stream at a chunk boundary: its tiles' slots are dropped and its id refused from now on."""
        self._check_open(stream)
        for tiled in self._graphs.pop(stream).values():
            self._free(tiled)

    @property
    def ids(self) -> list[int]:
        return list(self._graphs)

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, stream: object) -> bool:
        return stream in self._graphs

    def tiles(self, stream: int, graph: str) -> GraphTiles | None:
        """The tiles `stream`'s frames of `graph` run in (None: whole frames, or not started)."""
        self._check_open(stream)
        tiled = self._graphs[stream].get(graph)
        return None if tiled is None else tiled.tiles

    def _check_open(self, stream: Any) -> None:
        if stream not in self._graphs:
            held = ", ".join(map(str, self._graphs)) or "none"
            raise VaeDeployError(f"tiled batched streams: no open stream {stream!r} (open: {held}); "
                                 f"add() opens one")

    def _free(self, tiled: _Tiled) -> None:
        for slot in tiled.slots:
            self._slots.remove(slot)
            del self._owner[slot]

    def _open(self, stream: int, tiles: GraphTiles | None, size: tuple[int, int] | None) -> _Tiled:
        tiled = _Tiled(tiles, size)
        for index in range(1 if tiles is None else tiles.count):
            slot = self._slots.add()
            tiled.slots.append(slot)
            self._owner[slot] = (stream, None if tiles is None else index)
        return tiled

    # ------------------------------------------------------------------ a round

    def step(self, graph: str, chunks: Mapping[int, Any]) -> dict[int, dict[str, np.ndarray]]:
        """One chunk of `graph` for each stream in `chunks` (stream id -> chunk, as `Stream.step` takes it)
        -> stream id -> that chunk's data outputs by name, joined from its tiles."""
        if not isinstance(chunks, Mapping):
            raise InputShapeError(f"tiled batched streams: step takes {{stream id: chunk}}, got "
                                  f"{type(chunks).__name__}")
        spec = self.runner.graph(graph)
        for stream in chunks:
            self._check_open(stream)
        new: dict[int, _Tiled] = {}  # streams whose first chunk of `graph` this is: kept if the round runs
        try:
            parts, rounds = self._cut(spec, chunks, new)
            results = self._run(graph, parts)
        except BaseException:
            for tiled in new.values():
                self._free(tiled)
            raise
        for stream, tiled in new.items():
            self._graphs[stream][graph] = tiled
        return {stream: _joined(tiled, results) for stream, tiled in rounds.items()}

    def encode(self, chunks: Mapping[int, np.ndarray]) -> dict[int, tuple[np.ndarray, ...]]:
        """Next chunk of frames per stream -> (mu, logvar) per stream."""
        return {s: tuple(out.values()) for s, out in self.step("encoder", chunks).items()}

    def decode(self, chunks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Next chunk of latents per stream -> frames per stream."""
        return {s: next(iter(out.values())) for s, out in self.step("decoder", chunks).items()}

    # ------------------------------------------------------------------ cutting

    def _cut(self, spec, chunks: Mapping[int, Any], new: dict[int, _Tiled]
             ) -> tuple[dict[int, Any], dict[int, _Tiled]]:
        """Each stream's chunk as its slots' parts (slot -> part: a tile's window, or the whole chunk), and
        each stream's tiles; the plan of a stream's first chunk is made here, as TiledStream makes it."""
        parts: dict[int, Any] = {}
        rounds: dict[int, _Tiled] = {}
        for stream, chunk in chunks.items():
            try:
                arrays = named_inputs(spec, chunk)
                x = frame_input(spec, arrays)
                tiled = self._graphs[stream].get(spec.name)
                if tiled is None:
                    tiles = None
                    if x is not None and self.planner is not None:
                        tiles = plan_tiles(self.runner, self.planner, spec, x, self.rows or 1)
                        if tiles is not None and self.planner.parts(spec.name):
                            raise ConfigError(SPLIT_NOT_BATCHED)
                    tiled = new[stream] = self._open(stream, tiles, None if x is None else x.shape[-2:])
                elif x is not None and tiled.size is not None:
                    check_frame_size(spec.name, x.shape[-2:], tiled.size)
            except InputShapeError as err:
                raise InputShapeError(f"stream {stream}: {err}") from err
            rounds[stream] = tiled
            if x is None or tiled.tiles is None:  # whole frames (or an input the slot's stream refuses)
                parts[tiled.slots[0]] = arrays
                continue
            for slot, (row, col) in zip(tiled.slots, tile_windows(tiled.tiles), strict=True):
                parts[slot] = {spec.inputs[0].name: cut_tile(x, row, col)}
        return parts, rounds

    # ------------------------------------------------------------------ calls

    def _run(self, graph: str, parts: dict[int, Any]) -> dict[int, dict[str, np.ndarray]]:
        """Every slot's part through the shared calls, in steps of at most `rows` batch rows; a failed step
        puts back the state the earlier ones advanced."""
        steps = self._steps(parts)
        held = self._slots.held(list(parts)) if len(steps) > 1 else None
        results: dict[int, dict[str, np.ndarray]] = {}
        try:
            for step in steps:
                results |= self._slots.step(graph, step)
        except BaseException as err:
            if held is not None:
                self._slots.restore(held)
            if isinstance(err, StreamChunkError):
                raise InputShapeError(self._named(err)) from err
            raise
        return results

    def _steps(self, parts: dict[int, Any]) -> list[dict[int, Any]]:
        """The round's parts as BatchedStreams steps: one, or (with `rows`) groups of equal shapes first, at
        most `rows` batch rows each (a part of batch b counts b)."""
        if self.rows is None or len(parts) <= 1:
            return [parts]
        order = sorted(parts, key=lambda slot: _shape_key(parts[slot]))  # stable: tile and stream order
        steps: list[dict[int, Any]] = []
        count = 0
        for slot in order:
            rows = _rows(parts[slot])
            if not steps or count + rows > self.rows:
                steps.append({})
                count = 0
            steps[-1][slot] = parts[slot]
            count += rows
        return steps

    def _named(self, err: StreamChunkError) -> str:
        """A slot's refusal from BatchedStreams in terms of this object's stream ids (and tile)."""
        if err.stream not in self._owner:
            return str(err)
        stream, tile = self._owner[err.stream]
        where = f"stream {stream}" + ("" if tile is None else f" (tile {tile})")
        return f"{where}: {err.reason}"


def _first(part: Any) -> Any:
    return next(iter(part.values())) if isinstance(part, Mapping) and part else part


def _shape_key(part: Any) -> tuple:
    first = _first(part)
    shape = getattr(first, "shape", None)
    return (0, tuple(shape)) if shape is not None else (1, ())


def _rows(part: Any) -> int:
    shape = getattr(_first(part), "shape", None)
    return int(shape[0]) if shape else 1


def _joined(tiled: _Tiled, results: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A stream's outputs for its chunk: its one slot's, or its tiles' joined as TiledStream joins them."""
    if tiled.tiles is None:
        return results[tiled.slots[0]]
    joiner = TileJoiner(tiled.tiles, tiled.size)
    for slot, (row, col) in zip(tiled.slots, tile_windows(tiled.tiles), strict=True):
        joiner.add(row, col, results[slot])
    return joiner.result()


__all__ = ["TiledBatchedStreams"]
