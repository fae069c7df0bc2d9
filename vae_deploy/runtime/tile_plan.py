"""What the user asked for (`--tile`, `--tile-budget`) checked against the model's tiling records, and the
tiles of a frame (no torch). runtime/tiled_stream.py runs them; runtime/tiling.py reads the records.

A tile size is in pixels of the frames, whichever graph runs: an encoder takes `tile` pixels a side, a
decoder `tile / spatial factor` latent positions (which become `tile` pixels). In exact mode the tile is a
tile's *core*: each tile also reads the halo around it (clipped at the frame's edges) and its output is
cropped to the core, so the cores tile the frame. In blend mode the tile is the whole window; neighbours
share `overlap` of it and are cross-faded with linear ramps.

Refused when the stream opens, before any frame is read, one line each: a size that is not a number, auto
or off; a tile that is not a multiple of the model's alignment; an exact tile smaller than the halo (each
tile would compute more than 9 times its core); a budget smaller than one tile needs (for auto: once the
frame size is known, `check_frame`, and only when the frame does not fit whole); and any tile asked of a
model whose record says it cannot be tiled. A tile as large as the frame or larger is not an error: the
frame runs untiled (the same output, and what `auto` does when the frame fits its budget).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vae_deploy.errors import ConfigError
from vae_deploy.runtime.tiling import BLEND, EXACT, NONE, UNRECORDED, TileRecord, tile_records

AUTO, OFF = "auto", "off"
BUDGET_FRACTION = 0.5  # of this machine's memory: what a frame's working memory may take by default
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_tile(text: str | int) -> int | str:
    """`--tile`: a size in pixels, "auto" or "off"."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        word = str(text).strip().lower()
        if word in (AUTO, OFF):
            return word
        if not re.fullmatch(r"\d+", word):
            raise ConfigError(f"--tile must be a size in pixels, auto or off, got {text!r}")
        value = int(word)
    if value < 1:
        raise ConfigError(f"--tile must be a positive size in pixels, auto or off, got {value}")
    return value


def parse_budget(text: str | int) -> int:
    """`--tile-budget`: bytes, as 4GB, 512MB, 1.5GiB or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(f"--tile-budget must be a memory size such as 4GB, 512MB or 1.5GiB, got "
                              f"{text!r}")
        value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ConfigError(f"--tile-budget must be more than 0 bytes, got {text!r}")
    return int(value)


def default_budget() -> int:
    """BUDGET_FRACTION of this machine's physical memory (4 GB where the system does not say)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 8 * 10**9
    return int(total * BUDGET_FRACTION)


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class TileRequest:
    """The user's choice: `tile` in pixels, AUTO (tile only when a frame would not fit `budget`) or OFF;
    `budget` in bytes for a frame's working memory (None: default_budget()). `graphs`: the steady graphs
    the command runs ("decoder" for `decode`), None for all; a size is checked against those alone, so
    `decode --tile N` is never refused for the encoder's halo."""

    tile: int | str = AUTO
    budget: int | None = None
    graphs: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "tile", parse_tile(self.tile))
        if self.budget is not None:
            object.__setattr__(self, "budget", parse_budget(self.budget))


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in the graph's input units: it reads [lo, hi) and keeps [keep_lo, keep_hi)
    of its output (exact mode; blend keeps its whole window, weighted)."""

    lo: int
    hi: int
    keep_lo: int
    keep_hi: int


@dataclass(frozen=True)
class GraphTiles:
    """The tiles of one graph's frames: spans along height and width, and the mode that joins them."""

    mode: str  # EXACT or BLEND
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]
    tile: int  # the tile in input units (exact: the core; blend: the window)

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


@dataclass(frozen=True)
class _Group:
    """A steady graph and its first-chunk graph, planned as one (the first chunk goes through the same
    tile's stream): the stricter of their records."""

    mode: str
    halo: int  # input units
    align: int  # input units
    overlap: float
    why: str
    bytes_per_position: float | None
    unit: int  # pixels per input unit: 1 for an encoder, the spatial factor for a decoder
    parts: tuple[tuple[str, bool], ...] = ()  # a graph in parts: (part, whether it tiles), in run order


class TilePlanner:
    """A request checked against a model's records when a stream opens; `plan` gives a frame's tiles."""

    def __init__(self, manifest: Any, request: TileRequest, note: Callable[[str], None] = lambda m: None):
        self.request = request
        self.budget = request.budget if request.budget is not None else default_budget()
        self._note = note
        self._noted = False
        records = tile_records(manifest)
        factor = _spatial_factor(manifest)
        self.groups: dict[str, _Group] = {}
        parts = {part for record in records.values() for part, _ in record.parts}
        for name, spec in manifest.graphs.items():
            if name.endswith("_first") or name in parts or (request.graphs is not None
                                                            and name not in request.graphs):
                continue
            members = [records[name]] + ([records[spec.first_graph]] if spec.first_graph in records else [])
            unit = 1 if str(spec.inputs[0].shape[-1]) == "width" else factor
            self.groups[name] = _group(members, unit)
        if request.tile not in (AUTO, OFF):
            self._check_size(request.tile)

    @property
    def active(self) -> bool:
        """Whether any frame could be tiled: off, or a model recorded as `none` throughout, never is."""
        return self.request.tile != OFF and any(g.mode != NONE for g in self.groups.values())

    # ------------------------------------------------------------------ checks when the stream opens

    def parts(self, graph: str) -> tuple[tuple[str, bool], ...]:
        """The parts `graph` runs in when tiled, (part, whether it tiles) in order; () for a graph that
        tiles whole."""
        group = self.groups.get(graph)
        return group.parts if group is not None else ()

    def _check_size(self, tile: int) -> None:
        for name, group in self.groups.items():
            if group.mode == NONE and group.why == UNRECORDED:
                raise ConfigError(f"--tile {tile}: {UNRECORDED} to tile it; --tile auto runs it untiled")
            if group.mode == NONE:
                raise ConfigError(f"--tile {tile}: tiling is not available for this model yet ({name}: "
                                  f"{group.why}); --tile auto runs it untiled")
        align = math.lcm(*(g.align * g.unit for g in self.groups.values()))
        if tile % align:
            below = tile - tile % align
            nearest = " or ".join(str(t) for t in (below, below + align) if t > 0)
            raise ConfigError(f"--tile {tile} is not a multiple of {align} pixels (this model's tile "
                              f"alignment: its spatial factor); use {nearest}")
        for name, group in self.groups.items():
            halo = group.halo * group.unit
            if group.mode == EXACT and tile < halo:
                raise ConfigError(f"--tile {tile} is smaller than this model's halo: each {name} tile reads "
                                  f"{halo} px around it for exact output, so a tile must be at least {halo} "
                                  f"px")
            if group.mode == BLEND and tile < 4 * group.align * group.unit:
                raise ConfigError(f"--tile {tile} is too small to blend: a tile must be at least "
                                  f"{4 * group.align * group.unit} px (4x the alignment, so that neighbours "
                                  f"overlap)")
            need = self._window_bytes(group, tile // group.unit)
            if need is not None and need > self.budget:
                raise ConfigError(f"--tile-budget {format_bytes(self.budget)} is too small for one {tile} px "
                                  f"tile: its {name} step needs about {format_bytes(need)} (use a smaller "
                                  f"--tile or a larger --tile-budget)")

    # ------------------------------------------------------------------ a frame's tiles

    def check_frame(self, width: int, height: int) -> None:
        """Refuse, before any frame is read, a frame of width x height pixels that `auto` could not fit in
        its budget in tiles of one step (ort-cpu's calls; a backend that runs whole chunks is checked again
        at its first chunk)."""
        for graph, group in self.groups.items():
            self.plan(graph, height // group.unit, width // group.unit, announce=False)

    def plan(self, graph: str, height: int, width: int, steps: int = 1, announce: bool = True
             ) -> GraphTiles | None:
        """The tiles of `graph`'s frames of height x width input units, for calls of `steps` steps of its
        stream axis; None: run whole (off, a tile not smaller than the frame, or auto and it fits).
        `announce`: say in a note that a blended model's tiles are not exact."""
        group = self.groups.get(graph)
        if group is None or self.request.tile == OFF or group.mode == NONE:
            return None
        if self.request.tile == AUTO:
            tile = self._auto_tile(graph, group, height, width, steps)
            if tile is None:
                return None
        else:
            tile = self.request.tile // group.unit
        if tile >= height and tile >= width:
            return None
        if group.mode == BLEND and announce and not self._noted:
            self._noted = True
            self._note(f"{graph} tiles of {tile * group.unit} px are blended, not exact ({group.why}), so "
                       f"the output differs from untiled output near the seams")
        if group.mode == EXACT:
            halo = group.halo
            return GraphTiles(EXACT, _exact_spans(height, tile, halo), _exact_spans(width, tile, halo), tile)
        return GraphTiles(BLEND, _blend_spans(height, tile, group), _blend_spans(width, tile, group), tile)

    def _auto_tile(self, graph: str, group: _Group, height: int, width: int, steps: int) -> int | None:
        """The largest tile whose step fits the budget; None when the whole frame fits (or no estimate)."""
        per = group.bytes_per_position
        if per is None or per * height * width * steps <= self.budget:
            return None
        step = group.align
        smallest = self._smallest(group)
        tile = max(height, width) // step * step
        while tile >= smallest:
            need = self._window_bytes(group, tile, height, width, steps)
            if need is not None and need <= self.budget:
                return tile
            tile -= step
        need = format_bytes(self._window_bytes(group, smallest, height, width, steps) or 0)
        calls = f"calls of {steps} steps" if steps > 1 else "one step"
        raise ConfigError(f"--tile-budget {format_bytes(self.budget)} is too small for this model at "
                          f"{width * group.unit}x{height * group.unit}: its smallest {graph} tile "
                          f"({smallest * group.unit} px, with its halo) needs about {need} for {calls}")

    def _smallest(self, group: _Group) -> int:
        """The smallest tile (input units) `_check_size` accepts."""
        floor = group.halo if group.mode == EXACT else 4 * group.align
        return max(group.align, -(-floor // group.align) * group.align)

    def _window_bytes(self, group: _Group, tile: int, height: int | None = None, width: int | None = None,
                      steps: int = 1) -> float | None:
        """The estimated working memory of one tile's step: what a tile reads (core and halo, clipped to
        the frame when its size is known) times the recorded bytes per position."""
        if group.bytes_per_position is None:
            return None
        side = tile + 2 * group.halo if group.mode == EXACT else tile
        h = side if height is None else min(side, height)
        w = side if width is None else min(side, width)
        return group.bytes_per_position * h * w * steps


def _spatial_factor(manifest: Any) -> int:
    multiples = manifest.graph("encoder").dim_multiples
    return max(multiples.get("height", 1), multiples.get("width", 1), 1)


def _group(records: list[TileRecord], unit: int) -> _Group:
    modes = {r.mode for r in records}
    mode = NONE if NONE in modes else BLEND if BLEND in modes else EXACT
    why = next((r.why for r in records if r.mode == mode and r.why), "")
    memory = [r.bytes_per_position for r in records]
    return _Group(mode, max(r.halo for r in records), math.lcm(*(r.align for r in records)),
                  max(r.overlap for r in records), why,
                  None if None in memory else max(memory), unit,  # type: ignore[type-var]
                  records[0].parts if mode == EXACT else ())


def _exact_spans(size: int, tile: int, halo: int) -> tuple[Span, ...]:
    """Cores of `tile` from 0 (the last maybe shorter), each read with `halo` around it, clipped."""
    return tuple(Span(max(0, lo - halo), min(size, lo + tile + halo), lo, min(size, lo + tile))
                 for lo in range(0, size, tile))


def _blend_spans(size: int, tile: int, group: _Group) -> tuple[Span, ...]:
    """Windows of `tile` sharing at least `overlap` of it with each neighbour, the last ending at the
    frame's edge (it then shares more with the one before)."""
    if tile >= size:
        return (Span(0, size, 0, size),)
    align = group.align
    overlap = max(align, round(tile * group.overlap / align) * align)
    stride = tile - overlap
    count = -(-(size - tile) // stride) + 1
    starts = sorted({min(k * stride, size - tile) for k in range(count)})
    return tuple(Span(lo, lo + tile, lo, lo + tile) for lo in starts)
