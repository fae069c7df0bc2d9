"""A streaming session that runs each frame in spatial tiles (no torch): `TiledStream`, the interface of
runtime/runner.py's `Stream` (`step`, `encode`, `decode`, `reset`).

Each tile keeps a stream of its own (`runner.open_stream()`), so its causal state and the first-chunk rule
go with it from chunk to chunk, exactly as for a whole frame: a causal network's spatial receptive field
does not grow with time, so the halo measured at export covers what the state carries too. A chunk NTCHW is
cut into the tiles the planner gives (runtime/tile_plan.py), each tile runs, and the outputs are joined:
exact mode crops each tile's halo away and places its core; blend mode cross-fades overlapping windows with
linear ramps and divides by the summed weights. Outputs scale with the graph (an encoder's latents are
1/spatial factor of its input, a decoder's frames spatial factor times): the scale is read off the first
tile's output.

The plan is made at a graph's first chunk, when its frame size and chunk length are known; a later chunk of
another frame size is refused, as a Stream refuses it (open a new stream).

A graph whose global op works at latent resolution only (Wan's attention) tiles through its parts (the
manifest's tiling record lists them): the encoder's pixel part runs in tiles, its features are joined, and
its latent part runs on the whole latent frame; the decoder's latent part runs whole, then its pixel part
in tiles. Untiled (a frame that fits, or tiling off) the graph runs whole, as exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np

from vae_deploy.errors import InputShapeError, ModelFormatError
from vae_deploy.runtime.runner import Runner, Stream, named_inputs
from vae_deploy.runtime.spec import GraphSpec
from vae_deploy.runtime.tile_plan import EXACT, GraphTiles, Span, TilePlanner


class TiledStream:
    """Streaming session over a runner whose frames run in tiles (see the module docstring)."""

    def __init__(self, runner: Runner, planner: TilePlanner):
        self.runner = runner
        self.planner = planner
        self._graphs: dict[str, _TiledGraph] = {}

    def reset(self) -> None:
        self._graphs.clear()

    def tiles(self, graph: str) -> GraphTiles | None:
        """The tiles `graph` runs in (None: whole frames, or not started)."""
        started = self._graphs.get(graph)
        return None if started is None else started.tiles

    def step(self, graph: str, chunk: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
        """The next chunk of `graph`'s stream -> its data outputs for that chunk, tiled."""
        spec = self.runner.graph(graph)
        arrays = named_inputs(spec, chunk)
        x = frame_input(spec, arrays)
        if x is None:
            return self._whole(graph).step(graph, arrays)  # not a frame stream, or input Stream refuses
        size = x.shape[-2:]
        started = self._graphs.get(graph)
        if started is None:
            tiles = plan_tiles(self.runner, self.planner, spec, x)
            parts = self.planner.parts(graph) if tiles is not None else ()
            started = _TiledGraph(self.runner, tiles, size, parts)
            self._graphs[graph] = started
        else:
            check_frame_size(graph, size, started.size)
        return started.step(graph, x)

    def _whole(self, graph: str) -> Stream:
        started = self._graphs.setdefault(graph, _TiledGraph(self.runner, None, (0, 0)))
        return started.streams[0]

    def encode(self, chunk: np.ndarray) -> tuple[np.ndarray, ...]:
        """Next chunk of frames -> (mu, logvar) for that chunk."""
        return tuple(self.step("encoder", chunk).values())

    def decode(self, chunk: np.ndarray) -> np.ndarray:
        """Next chunk of latents -> frames for that chunk."""
        return next(iter(self.step("decoder", chunk).values()))


class _TiledGraph:
    """One graph's tiles and their streams. A graph in parts (`parts`, Wan's split at latent resolution)
    runs them in order, each one's data output the next one's input: the part that tiles in the tiles'
    streams, the others whole in a stream of their own."""

    def __init__(self, runner: Runner, tiles: GraphTiles | None, size: tuple[int, int],
                 parts: tuple[tuple[str, bool], ...] = ()):
        self.tiles = tiles
        self.size = tuple(size)
        self.parts = parts
        count = 1 if tiles is None else tiles.count
        self.streams = [runner.open_stream() for _ in range(count)]
        self.whole = runner.open_stream() if parts else None  # the parts that run on whole frames

    def step(self, graph: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.tiles is None:
            return self.streams[0].step(graph, x)
        if not self.parts:
            return self._tiled(graph, x)
        outputs: dict[str, np.ndarray] = {}
        for part, tiles in self.parts:
            outputs = self._tiled(part, x) if tiles else self.whole.step(part, x)
            x = next(iter(outputs.values()))  # a part's data output: the next part's data input
        return outputs

    def _tiled(self, graph: str, x: np.ndarray) -> dict[str, np.ndarray]:
        joiner = TileJoiner(self.tiles, self.size)
        for index, (row, col) in enumerate(tile_windows(self.tiles)):  # one tile's outputs held at a time
            joiner.add(row, col, self.streams[index].step(graph, cut_tile(x, row, col)))
        return joiner.result()


# ---------------------------------------------------------------- cutting and joining
# Shared with runtime/tiled_batched_streams.py, which runs the same tiles of several streams in shared calls:
# both cut, plan and join with these, so a tile's window and a frame's join are the same code.


def frame_input(spec: GraphSpec, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The NTCHW frames a chunk of `spec` is tiled along, or None: not a frame stream (a graph of several
    inputs, another layout), or an input the stream itself refuses (not an array of 5 axes)."""
    x = arrays[spec.inputs[0].name]
    tiled = len(spec.inputs) == 1 and spec.inputs[0].layout == "NTCHW"
    if not tiled or not isinstance(x, np.ndarray) or x.ndim != 5:
        return None
    return x


def plan_tiles(runner: Runner, planner: TilePlanner, spec: GraphSpec, x: np.ndarray, rows: int = 1
               ) -> GraphTiles | None:
    """The tiles of `spec`'s frames, planned at its first chunk `x` (frame size and chunk length known).
    `rows`: tiles one call stacks along the batch axis (auto's budget counts them all)."""
    height, width = x.shape[-2:]
    return planner.plan(spec.name, height, width, call_steps(runner, spec, x.shape[1]) * rows)


def call_steps(runner: Runner, spec: GraphSpec, length: int) -> int:
    """Steps of `spec`'s stream axis one call takes for a chunk `length` long along it: the memory a tile's
    call needs grows with them."""
    multiple = spec.dim_multiples.get(spec.stream_axis, 1) if spec.stream_axis else 1
    limit = runner.call_limit(spec)  # in units of the stream axis, like the chunk
    return max(1, (min(length, limit) if limit else length) // multiple)


def check_frame_size(graph: str, size: tuple[int, int], started: tuple[int, int]) -> None:
    """A later chunk's frames must have the size the plan was made for, as a Stream refuses another."""
    if tuple(size) != tuple(started):
        raise InputShapeError(f"{graph} stream: frames of {size[0]}x{size[1]} after frames of "
                              f"{started[0]}x{started[1]} (the frame size changed mid-stream; "
                              f"open a new stream)")


def tile_windows(tiles: GraphTiles) -> list[tuple[Span, Span]]:
    """The tiles as (row span, column span), in the order they run and are joined (row by row)."""
    return [(row, col) for row in tiles.rows for col in tiles.cols]


def cut_tile(x: np.ndarray, row: Span, col: Span) -> np.ndarray:
    """The window a tile reads (its core and halo, or its blend window) of the frames NT...HW."""
    return np.ascontiguousarray(x[..., row.lo:row.hi, col.lo:col.hi])


class TileJoiner:
    """A frame's outputs joined from its tiles' outputs, added one tile at a time in `tile_windows` order:
    exact mode places each tile's core; blend mode accumulates ramp-weighted windows and divides by the
    summed weights in `result`. The scale (output over input units) is read off the first tile added."""

    def __init__(self, tiles: GraphTiles, size: tuple[int, int]):
        self.tiles = tiles
        self.height, self.width = size
        self.joined: dict[str, np.ndarray] = {}
        self.weights: np.ndarray | None = None
        self.scale: Fraction | None = None

    def add(self, row: Span, col: Span, outputs: dict[str, np.ndarray]) -> None:
        tiles, scale = self.tiles, self.scale
        if scale is None:
            first = next(iter(outputs.values()))
            scale = self.scale = Fraction(first.shape[-1], col.hi - col.lo)
            height, width = _scaled(self.height, scale), _scaled(self.width, scale)
            self.joined = {name: np.zeros(out.shape[:-2] + (height, width), dtype=out.dtype)
                           for name, out in outputs.items()}
            if tiles.mode != EXACT:
                self.weights = np.zeros((height, width), dtype=np.float32)
        for name, out in outputs.items():
            if tiles.mode == EXACT:
                _place(self.joined[name], out, row, col, scale)
            else:
                ramp = np.outer(_ramp(tiles.rows, row, scale), _ramp(tiles.cols, col, scale))
                _region(self.joined[name], row, col, scale)[...] += out * ramp
                if name == next(iter(outputs)):
                    _region(self.weights, row, col, scale)[...] += ramp

    def result(self) -> dict[str, np.ndarray]:
        if self.weights is not None:
            for name in self.joined:
                self.joined[name] /= self.weights
        return self.joined


def _scaled(n: int, scale: Fraction) -> int:
    value = n * scale
    if value.denominator != 1:  # tile origins are aligned to the graph's grid, so this does not happen
        raise ModelFormatError(f"a tile edge at {n} falls between the graph's output positions (scale "
                               f"{scale}): the model's tiling alignment is wrong; re-export it")
    return int(value)


def _place(joined: np.ndarray, out: np.ndarray, row: Span, col: Span, scale: Fraction) -> None:
    """Exact mode: the tile's core (its output without the halo) into its place in the frame."""
    top, left = _scaled(row.keep_lo - row.lo, scale), _scaled(col.keep_lo - col.lo, scale)
    h, w = _scaled(row.keep_hi - row.keep_lo, scale), _scaled(col.keep_hi - col.keep_lo, scale)
    y0, x0 = _scaled(row.keep_lo, scale), _scaled(col.keep_lo, scale)
    joined[..., y0:y0 + h, x0:x0 + w] = out[..., top:top + h, left:left + w]


def _region(array: np.ndarray, row: Span, col: Span, scale: Fraction) -> np.ndarray:
    rows = slice(_scaled(row.lo, scale), _scaled(row.hi, scale))
    return array[..., rows, _scaled(col.lo, scale):_scaled(col.hi, scale)]


def _ramp(spans: tuple[Span, ...], span: Span, scale: Fraction) -> np.ndarray:
    """Blend weights of `span` along one axis, in output units: 1 inside, rising linearly over what it
    shares with the span before and falling over what it shares with the one after (like diffusers'
    blend_v/blend_h), never 0, so that the summed weights can be divided by."""
    lo, hi = _scaled(span.lo, scale), _scaled(span.hi, scale)
    weight = np.ones(hi - lo, dtype=np.float32)
    position = np.arange(lo, hi, dtype=np.float32) + 0.5
    i = spans.index(span)
    if i > 0:
        shared = _scaled(spans[i - 1].hi, scale) - lo
        weight = np.minimum(weight, (position - lo) / shared)
    if i + 1 < len(spans):
        shared = hi - _scaled(spans[i + 1].lo, scale)
        weight = np.minimum(weight, (hi - position) / shared)
    return weight


def open_tiled_stream(runner: Runner, planner: TilePlanner | None) -> Stream | TiledStream:
    """A tiled stream over `runner`, or its own stream when nothing can be tiled (no planner: tiling off;
    or a model whose records say none of its graphs tiles)."""
    return TiledStream(runner, planner) if planner is not None and planner.active else runner.open_stream()


__all__ = ["TileJoiner", "TiledStream", "call_steps", "check_frame_size", "cut_tile", "frame_input",
           "open_tiled_stream", "plan_tiles", "tile_windows"]
