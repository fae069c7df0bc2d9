"""How each graph may be tiled spatially, measured at export from the module (the record's reader and the
tiled stream are runtime/tiling.py; docs/tiling.md explains the method).

A graph is *exact* to tile when every output position depends only on inputs within a fixed distance of it
(its receptive field): a tile that carries that distance (the halo) around its core computes the core as the
whole frame would, and the halo is cropped away. The halo is measured, not guessed: the gradient of one
central output unit (summed over channels, at the clip's last time step, so that everything the causal state
carries counts) with respect to the input is nonzero exactly on the inputs it depends on, for a generic
input; the union over a few random inputs is its receptive field. A network with a global op (GroupNorm's
statistics over the whole frame, attention over a whole frame) depends on every input: the field reaches
the input's border however large the input is, and such a graph is not exact.

Some families are known to have global ops, and the record says what the runtime may do with them instead
(GLOBAL_FAMILIES): diffusers' AutoencoderKL may be blended (what diffusers' own enable_tiling does).
AutoencoderKLWan's attention runs at latent resolution only, so its graphs are exported in two parts split
there (export/specs.py, a LatentSplit model): the pixel-resolution part is measured like any graph, the
latent-resolution part runs on whole latent frames, and the whole graph's record is its tiled part's with the
list of parts (split_record). Everything else is measured; a measured global graph is recorded as not
tileable.

The record also carries the working memory of one step per input position (`bytes_per_position`), from
ONNX shape inference of the exported graph at a concrete size, for `--tile auto`'s budget.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.export.specs import graph_specs, is_part, part_runs_whole
from vae_deploy.runtime.spec import GraphSpec, random_inputs
from vae_deploy.runtime.tiling import BLEND, EXACT, NONE

# Families whose graphs hold a global op by design: kind -> (mode, why). Measuring them would only confirm
# it (their field covers any frame), at the cost of a backward pass over a large frame.
GLOBAL_FAMILIES: dict[str, tuple[str, str]] = {
    "diffusers-autoencoder-kl": (
        BLEND, "GroupNorm takes its statistics over the whole frame (and the mid block attends over it): "
               "tiles can only be blended"),
    "diffusers-autoencoder-kl-wan": (
        NONE, "its mid block attends over the whole latent frame: only its graphs split at latent "
              "resolution tile (the parts export writes), not a graph exported whole"),
}
# Latent positions along each side of the frames the field is measured on: doubled while the field reaches
# the border, up to the last. A local network is measured where its field fits; a field wider than half of
# the last size is treated like a global one (a halo that large would make tiles mostly halo anyway).
MEASURE_SIZES = (24, 48, 96)
SEEDS = (0, 1)  # random inputs whose fields are joined: a ReLU may zero one input's gradient by chance
BLEND_OVERLAP = 0.25  # fraction of a blended tile shared with each neighbour (diffusers' tile_overlap_factor)


def tiling_records(kind: str, model: Any, specs: dict[str, GraphSpec], folder: Path,
                   log: Callable[[str], None] = lambda msg: None) -> dict[str, dict]:
    """One record per video graph of `specs` (exported into `folder`), or {} for a model that is not a
    video model (the MLP: nothing spatial to tile). A graph made of parts (spec.parts) is recorded after
    them: see split_record."""
    if not all(spec.inputs[0].layout == "NTCHW" for spec in specs.values()):
        return {}
    log("measuring each graph's receptive field for spatial tiling")
    # A model that offers a copy at its narrowest widths is measured on it (the same fields, a fraction of
    # the memory: a Wan 2.1-width decoder's gradients at the sizes measured exceed 20 GB)
    narrow = model.narrow() if callable(getattr(model, "narrow", None)) else None
    field_model, field_specs = (model, specs) if narrow is None else (narrow, graph_specs(kind, None, narrow))
    records = {}
    for name in sorted(specs, key=lambda n: bool(specs[n].parts)):
        spec = specs[name]
        if spec.parts:
            records[name] = split_record(spec, records)
        elif part_runs_whole(name):
            records[name] = {"mode": NONE, "why": "runs on whole latent frames (the latent-resolution part "
                                                  "of a graph split for tiling)"}
        else:
            records[name] = graph_record(kind, field_model, field_specs[name], family_rule=not is_part(name))
        memory = None if records[name]["mode"] == NONE else bytes_per_position(folder / spec.file, spec)
        if memory is not None:
            records[name]["bytes_per_position"] = memory
        log(f"  tiling {name}: {describe(records[name])}")
    return {name: records[name] for name in specs}


def split_record(spec: GraphSpec, records: dict[str, dict]) -> dict:
    """The record of a graph made of parts: exact with its tiled part's halo and alignment (the other parts
    run whole), listed in `parts` as [graph, tiles] in the order they run; `none`, with the tiled part's
    reason, when that part does not tile exactly (a model with attention at pixel resolution too)."""
    tiled = [part for part in spec.parts if not part_runs_whole(part)]
    if len(tiled) != 1 or records[tiled[0]]["mode"] != EXACT:
        why = records[tiled[0]].get("why", "") if len(tiled) == 1 else "no single part to tile"
        return {"mode": NONE, "why": f"its pixel-resolution part does not tile exactly ({why})"}
    record = {key: value for key, value in records[tiled[0]].items() if key != "bytes_per_position"}
    record["parts"] = [[part, part in tiled] for part in spec.parts]
    return record


def describe(record: dict) -> str:
    if record["mode"] == EXACT:
        return f"exact, halo {record['halo']}, align {record['align']}"
    return f"{record['mode']}: {record['why']}"


def graph_record(kind: str, model: Any, spec: GraphSpec, family_rule: bool = True) -> dict:
    """The tiling record of one graph (runtime/tiling.py reads it); `family_rule`: whether GLOBAL_FAMILIES
    decides for the kind (not for a part of a split graph, which is measured)."""
    align = _align(spec)
    if family_rule and kind in GLOBAL_FAMILIES:
        mode, why = GLOBAL_FAMILIES[kind]
        if mode == BLEND:
            return {"mode": BLEND, "align": align, "overlap": BLEND_OVERLAP, "why": why}
        return {"mode": NONE, "why": why}
    for size in MEASURE_SIZES:
        halo = measured_halo(model, spec, size)
        if halo is not None:
            return {"mode": EXACT, "halo": _round_up(halo, align), "align": align, "measured_at": size}
    return {"mode": NONE, "why": f"its receptive field covers the whole frame at {MEASURE_SIZES[-1]} latent "
                                 f"positions a side (a global op): tiles would not be exact"}


def _align(spec: GraphSpec) -> int:
    """Tile origins and sizes must be multiples of this (input units): an encoder's strides put its output
    grid every `spatial factor` pixels, and a tile that starts elsewhere samples another grid."""
    return max(spec.dim_multiples.get("height", 1), spec.dim_multiples.get("width", 1), 1)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _spatial_symbols(spec: GraphSpec) -> tuple[str, str]:
    h, w = spec.inputs[0].shape[-2:]
    return str(h), str(w)


def measured_halo(model: Any, spec: GraphSpec, latent_size: int) -> int | None:
    """The halo (input units) of `spec` measured on frames of `latent_size` latent positions a side, or
    None when the field reaches the input's border there (too small a frame, or a global op)."""
    import torch

    env = spec.example_env(batch=1)
    if spec.stream_axis:  # two steps: the second depends on the first through the state
        env[spec.stream_axis] = 2 * spec.dim_multiples.get(spec.stream_axis, 1)
    sym_h, sym_w = _spatial_symbols(spec)
    units = latent_size * (_align(spec) if sym_h == "height" else 1)  # input units a side
    env[sym_h] = env[sym_w] = units
    field = np.zeros((units, units), dtype=bool)
    footprint = None
    for seed in SEEDS:
        arrays = random_inputs(spec, 1, np.random.default_rng(seed), **{k: v for k, v in env.items()
                                                                         if k != "batch"})
        state = spec.zero_state(env)
        x = torch.from_numpy(arrays[0].astype(np.float32)).requires_grad_(True)
        rest = [torch.from_numpy(a.astype(np.float32)) for a in arrays[1:]]
        rest += [torch.from_numpy(state[s.input].astype(np.float32)) for s in spec.state]
        out = getattr(model, spec.method)(x, *rest)
        out = out[0] if isinstance(out, (tuple, list)) else out
        scale = Fraction(out.shape[-1], units)
        rows, footprint = _central_unit(units, scale)
        target = out[:, -1, :, rows, rows].sum()  # the last step: what the state carried counts too
        (grad,) = torch.autograd.grad(target, x)
        field |= (grad.abs().sum(dim=tuple(range(grad.ndim - 2))) > 0).numpy()
    ys, xs = np.nonzero(field)
    if not len(ys):
        return 0
    lo, hi = footprint
    top, bottom, left, right = lo - ys.min(), ys.max() + 1 - hi, lo - xs.min(), xs.max() + 1 - hi
    if ys.min() == 0 or xs.min() == 0 or ys.max() == units - 1 or xs.max() == units - 1:
        return None
    return int(max(top, bottom, left, right, 0))


def _central_unit(units: int, scale: Fraction) -> tuple[slice, tuple[int, int]]:
    """The output rows of the input unit at the centre, and that unit's input rows [lo, hi): an encoder's
    output position covers 1/scale input pixels, a decoder's latent position `scale` output pixels."""
    if scale >= 1:
        c = units // 2
        return slice(int(c * scale), int((c + 1) * scale)), (c, c + 1)
    step = int(1 / scale)
    c = units // step // 2
    return slice(c, c + 1), (c * step, (c + 1) * step)


def bytes_per_position(path: Path, spec: GraphSpec, latent_size: int = 8) -> float | None:
    """The working memory of one step of `spec`'s graph per input position (pixel for an encoder, latent
    position for a decoder): the largest bytes any one node reads and writes at once, found by ONNX shape
    inference at a concrete size of `latent_size` latent positions a side, divided by the positions.
    None when shape inference cannot give every size (the runtime then cannot estimate, and says so)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable graph was refused by check_graph already
        return None
    env = spec.example_env(batch=1)
    sym_h, sym_w = _spatial_symbols(spec)
    units = latent_size * (_align(spec) if sym_h == "height" else 1)
    env[sym_h] = env[sym_w] = units
    if spec.stream_axis:
        env[spec.stream_axis] = spec.dim_multiples.get(spec.stream_axis, 1)  # one step, as ort-cpu runs
    shapes = {t.name: t.resolve(env) for t in spec.inputs}
    shapes.update({s.input: shape for s, shape in zip(spec.state, spec.state_shapes(env), strict=True)})
    graph = model.graph
    for value in graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name], strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
    del graph.value_info[:]  # the exporter's symbolic shapes: inferred again from the concrete inputs
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - an op shape inference does not know: no estimate
        return None
    sizes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tensor = value.type.tensor_type
        # A dimension inference leaves unknown is the batch times frames a frame VAE folds together (a
        # reshape by a computed shape), which is 1 at the one frame of batch 1 set above.
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        if tensor.HasField("shape") and tensor.elem_type:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            sizes[value.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    weights = {init.name for init in graph.initializer}
    peak = 0
    for node in inferred.graph.node:
        names = [n for n in list(node.input) + list(node.output) if n and n not in weights]
        peak = max(peak, sum(sizes.get(n, 0) for n in names))
    if not peak:
        return None
    return round(peak / (units * units), 2)
