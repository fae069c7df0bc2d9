"""The manifest's tiling record: how each graph may be split into spatial tiles (no torch).

Export measures it (export/tiling.py) and writes one record per graph under the manifest's `tiling`:

    {"mode": "exact", "halo": H, "align": A, "bytes_per_position": B, "measured_at": L}
        every output depends only on inputs within H input units (pixels for an encoder, latent positions
        for a decoder) of it, so a tile with H around its core gives the core exactly; tile origins and
        sizes are multiples of A (an encoder's spatial factor: its output grid)
    {"mode": "blend", "align": A, "overlap": F, "why": "...", "bytes_per_position": B}
        a global op (AutoencoderKL's GroupNorm): tiles overlap by the fraction F and are cross-faded
    {"mode": "none", "why": "..."}
        not tileable (yet)

A graph exported in parts (GraphSpec.parts: Wan's, split at latent resolution) adds
`"parts": [[graph, tiles], ...]`, in the order the parts run, to an exact record: the halo and alignment are
those of the part that tiles (tiles true); the others run on whole latent frames. The parts' own records
are the tiled part's measured one and "none" for the others.

`bytes_per_position`: the working memory of one stream step per input position (ONNX shape inference at
export), what `--tile auto` compares with its budget; absent where inference could not size every tensor.
A folder exported before the record existed has none: every graph reads as "none", with a why that says
to re-export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vae_deploy.errors import ModelFormatError

EXACT, BLEND, NONE = "exact", "blend", "none"
MODES = (EXACT, BLEND, NONE)
UNRECORDED = "the model folder records no tiling (exported before vae-deploy measured it): re-export it"


@dataclass(frozen=True)
class TileRecord:
    mode: str
    halo: int = 0  # exact: input units carried around a tile's core
    align: int = 1  # tile origins and sizes: multiples of this (input units)
    overlap: float = 0.0  # blend: fraction of a tile shared with each neighbour
    why: str = ""  # blend and none: the reason, in words
    bytes_per_position: float | None = None  # working memory of one step per input position
    parts: tuple[tuple[str, bool], ...] = ()  # a graph in parts: (part, whether it tiles), in run order

    @classmethod
    def from_json(cls, data: Any, where: str) -> TileRecord:
        if not isinstance(data, dict) or data.get("mode") not in MODES:
            raise ModelFormatError(f"{where}: a tiling record must be an object whose mode is one of "
                                   f"{', '.join(MODES)}, got {data!r}")
        mode = data["mode"]
        ints = {k: data.get(k, default) for k, default in (("halo", 0), ("align", 1))}
        for key, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "align" else 0):
                least = "positive" if key == "align" else "non-negative"
                raise ModelFormatError(f"{where}: tiling {key} must be a {least} integer, got {value!r}")
        overlap = data.get("overlap", 0.0)
        if mode == BLEND and not (isinstance(overlap, (int, float)) and 0 < overlap < 0.5):
            raise ModelFormatError(f"{where}: a blend record's overlap must be a fraction in (0, 0.5), got "
                                   f"{overlap!r}")
        memory = data.get("bytes_per_position")
        if memory is not None and not (isinstance(memory, (int, float)) and memory > 0):
            raise ModelFormatError(f"{where}: tiling bytes_per_position must be a positive number, got "
                                   f"{memory!r}")
        parts = data.get("parts", [])
        if not isinstance(parts, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], bool)
                for p in parts) or (parts and (mode != EXACT or sum(p[1] for p in parts) != 1)):
            raise ModelFormatError(f"{where}: tiling parts must be [graph, tiles] pairs of an exact record, "
                                   f"exactly one of which tiles, got {parts!r}")
        return cls(mode, ints["halo"], ints["align"], float(overlap), str(data.get("why", "")),
                   None if memory is None else float(memory), tuple((p[0], p[1]) for p in parts))


def tile_records(manifest: Any) -> dict[str, TileRecord]:
    """Every graph's record from a manifest (runtime/manifest.py's Manifest); "none" for a graph the
    manifest records nothing for (a folder exported before the record existed)."""
    recorded = getattr(manifest, "tiling", None) or {}
    records = {}
    for name in manifest.graphs:
        if name in recorded:
            records[name] = TileRecord.from_json(recorded[name], f"manifest.json: tiling.{name}")
        else:
            records[name] = TileRecord(NONE, why=UNRECORDED)
    return records
