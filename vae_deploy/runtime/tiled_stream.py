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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np

from vae_deploy.errors import InputShapeError, ModelFormatError
from vae_deploy.runtime.runner import Runner, Stream, named_inputs
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
        x = arrays[spec.inputs[0].name]
        tiled = len(spec.inputs) == 1 and spec.inputs[0].layout == "NTCHW"
        if not tiled or not isinstance(x, np.ndarray) or x.ndim != 5:
            return self._whole(graph).step(graph, arrays)  # not a frame stream, or input Stream refuses
        size = x.shape[-2:]
        started = self._graphs.get(graph)
        if started is None:
            # steps of the stream axis one call takes: the memory a tile's call needs grows with them
            multiple = spec.dim_multiples.get(spec.stream_axis, 1) if spec.stream_axis else 1
            limit = self.runner.call_limit(spec)  # in units of the stream axis, like the chunk
            steps = max(1, (min(x.shape[1], limit) if limit else x.shape[1]) // multiple)
            started = _TiledGraph(self.runner, self.planner.plan(graph, size[0], size[1], steps), size)
            self._graphs[graph] = started
        elif size != started.size:
            raise InputShapeError(f"{graph} stream: frames of {size[0]}x{size[1]} after frames of "
                                  f"{started.size[0]}x{started.size[1]} (the frame size changed mid-stream; "
                                  f"open a new stream)")
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
    """One graph's tiles and their streams."""

    def __init__(self, runner: Runner, tiles: GraphTiles | None, size: tuple[int, int]):
        self.tiles = tiles
        self.size = tuple(size)
        count = 1 if tiles is None else tiles.count
        self.streams = [runner.open_stream() for _ in range(count)]

    def step(self, graph: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.tiles is None:
            return self.streams[0].step(graph, x)
        tiles, height, width = self.tiles, self.size[0], self.size[1]
        joined: dict[str, np.ndarray] = {}
        weights: np.ndarray | None = None
        scale: Fraction | None = None
        index = 0
        for row in tiles.rows:
            for col in tiles.cols:
                part = np.ascontiguousarray(x[..., row.lo:row.hi, col.lo:col.hi])
                outputs = self.streams[index].step(graph, part)
                index += 1
                if scale is None:
                    first = next(iter(outputs.values()))
                    scale = Fraction(first.shape[-1], col.hi - col.lo)
                    joined = {name: np.zeros(out.shape[:-2] + (_scaled(height, scale), _scaled(width, scale)),
                                             dtype=out.dtype) for name, out in outputs.items()}
                    if tiles.mode != EXACT:
                        weights = np.zeros((_scaled(height, scale), _scaled(width, scale)), dtype=np.float32)
                for name, out in outputs.items():
                    if tiles.mode == EXACT:
                        _place(joined[name], out, row, col, scale)
                    else:
                        ramp = np.outer(_ramp(tiles.rows, row, scale), _ramp(tiles.cols, col, scale))
                        _region(joined[name], row, col, scale)[...] += out * ramp
                        if name == next(iter(outputs)):
                            _region(weights, row, col, scale)[...] += ramp
        if weights is not None:
            for name in joined:
                joined[name] /= weights
        return joined


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


__all__ = ["TiledStream", "open_tiled_stream"]
