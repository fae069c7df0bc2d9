"""Checkpoint -> model folder: encoder.onnx + decoder.onnx + reference/ + manifest.json (runtime/manifest.py).

Steps, each driven by the kind's graph specs (export/specs.py):
1. torch.onnx.export of each graph's model method, inputs/outputs named and dynamic axes set from the spec,
   with the torch.export-based exporter (dynamo=True, onnxscript: the train extra): every symbolic axis of
   the spec is a Dim.AUTO dynamic shape and the example inputs are sized so that torch.export neither fixes
   nor merges any of them (export_env); the spec's axis names are then written onto the graph
   (declare_io_shapes). The legacy TorchScript exporter remains for graphs LEGACY_GRAPHS names and for
   profiles asking for an opset below 18 (choose_exporter); the manifest records each graph's exporter.
   A model folder given as the source (re-profiling, export/reprofile.py) lends its fp32 graphs instead:
   nothing is traced, every later step runs as below, and the manifest's export_profile.reprofiled_from
   names the folder's manifest.
2. fp16 profiles: onnxconverter_common's convert_float_to_float16, with keep_io_types so callers keep
   float32 arrays unless the profile asks otherwise. int8 profiles: once both fp32 graphs exist, ONNX
   Runtime static quantization calibrated on real frames streamed through them (export/quantize.py).
3. onnx.checker (full check) and strict shape inference, then the spec check: names, then dynamic axes and
   fixed dims, then dtypes, so a graph that does not match its manifest is never written out as valid.
3b. How each video graph may be tiled spatially: its receptive field measured on the module, and its
   working memory per position from ONNX shape inference (export/tiling.py), for the manifest.
4. Graphs that share weights (a first-chunk graph and its steady graph) move them into one external-data
   file, weights.bin, each tensor once (export/shared_weights.py).
5. reference/: the checkpoint's model.safetensors + config.json, for the torch reference runner.
6. golden.npz: the reference's outputs on a few real and seeded random inputs (export/golden.py), what
   `verify` compares a backend with where torch is not installed.
7. Parity of the exported graphs against the reference (export/validate.py, the code behind `verify`);
   the report goes into the manifest, which is written last, after every file it vouches for.

The folder is built under a temporary name beside the target and swapped in at the end
(export/publish.py), so an interrupted or failed export leaves the previous folder, or nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import vae_deploy
from vae_deploy.config_io import to_dict
from vae_deploy.errors import ModelFormatError, VaeDeployError
from vae_deploy.export.compose import compose_parts
from vae_deploy.export.golden import GOLDEN_FILE, write_golden
from vae_deploy.export.profile import ExportProfile
from vae_deploy.export.publish import check_apart, staged_folder
from vae_deploy.export.quantize import (
    calibration_clips,
    calibration_feeds,
    check_quantizable,
    cpu_requirements,
    quantize_graph,
)
from vae_deploy.export.shared_weights import share_weights, uses_shared_weights
from vae_deploy.export.sources import ModelSource, open_model_source
from vae_deploy.export.specs import graph_specs
from vae_deploy.export.tiling import tiling_records
from vae_deploy.export.validate import ParityReport, check_parity
from vae_deploy.files import atomic_path
from vae_deploy.runtime.engine_cache import ENGINE_DIR
from vae_deploy.runtime.latent_space import latent_normalization_record
from vae_deploy.runtime.manifest import (
    REFERENCE_DIR,
    Manifest,
    external_data_files,
    hash_files,
    write_manifest,
)
from vae_deploy.runtime.registry import DEFAULT_BACKEND, get_backend
from vae_deploy.runtime.spec import GraphSpec, TensorSpec, dim_symbols, eval_dim, random_inputs

_ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


class GraphModule(nn.Module):
    """Exposes one model method as `forward`, returning a flat tuple (what the exporter wants)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args: torch.Tensor):
        out = getattr(self.model, self.method)(*args)
        return tuple(out) if isinstance(out, (tuple, list)) else out


def trace_inputs(spec: GraphSpec, seed: int = 0, env: dict[str, int] | None = None
                 ) -> tuple[torch.Tensor, ...]:
    """Example inputs at the spec's example dims, or at `env` (symbol values)."""
    env = env or spec.example_env()
    dims = {k: v for k, v in env.items() if k != "batch"}
    data = random_inputs(spec, env["batch"], np.random.default_rng(seed), **dims)
    state = spec.zero_state(env)
    arrays = [a.astype(np.float32) for a in data] + [state[s.input].astype(np.float32) for s in spec.state]
    return tuple(torch.from_numpy(a) for a in arrays)


# Exporters a graph can go through (recorded per graph in the manifest: GraphSpec.exporter).
DYNAMO, TORCHSCRIPT = "dynamo", "torchscript"
EXPORTERS = (DYNAMO, TORCHSCRIPT)
# Graphs torch.export cannot capture yet, as (model kind or adapter family, graph name) -> the failing op; they
# keep the legacy TorchScript exporter, and only they. Empty: every graph of every kind goes through dynamo.
LEGACY_GRAPHS: dict[tuple[str, str], str] = {}


# The dynamo exporter writes opset 18 and up natively. Below that it converts its opset-18 graph down with
# onnx's version converter, which keeps Split's opset-18 `num_outputs` attribute (every torch.chunk, e.g. the
# encoders' mu/logvar split) and so writes graphs the ONNX checker refuses; a profile asking for an older
# opset therefore gets the legacy exporter, which writes any opset from 7 on.
DYNAMO_MIN_OPSET = 18


def choose_exporter(kind: str, spec: GraphSpec, opset: int = DYNAMO_MIN_OPSET) -> str:
    """The exporter of graph `spec` of a model of kind `kind` at `opset`: dynamo, unless LEGACY_GRAPHS names
    the graph or the opset is older than the dynamo exporter writes."""
    if (kind, spec.name) in LEGACY_GRAPHS or opset < DYNAMO_MIN_OPSET:
        return TORCHSCRIPT
    return DYNAMO


def export_env(spec: GraphSpec) -> dict[str, int]:
    """Symbol values for the dynamo exporter's example inputs.

    torch.export specializes a dimension of size 0 or 1 to a constant and unifies dimensions that happen to
    have the same size ("duck sizing"), so a batch of 1, or a height equal to the width, would be baked into
    the graph. Starting from the spec's example dims (batch 2), each symbol is raised by its multiple until
    every distinct symbolic dim of the inputs (state formulas such as "height//8" included) is at least 2 and
    no two of them are equal."""
    env = spec.example_env(batch=2)
    exprs: list[str] = []
    for t in spec.all_inputs:
        exprs += [d for d in t.shape if isinstance(d, str) and d not in exprs]
    for _ in range(200):
        values = {e: eval_dim(e, env) for e in exprs}
        bad = next((e for e in exprs if values[e] < 2 or list(values.values()).count(values[e]) > 1), None)
        if bad is None:
            return env
        # raise the last symbol the offending dim depends on (the batch last: it costs the most compute)
        symbols = sorted(dim_symbols(bad), key=lambda s: (s == "batch", s))
        symbol = symbols[0] if values[bad] >= 2 else symbols[-1]
        env[symbol] += spec.dim_multiples.get(symbol, 1)
    raise ModelFormatError(f"{spec.name}: found no example sizes with distinct symbolic dims for the exporter")


def dynamic_shapes(spec: GraphSpec) -> tuple[tuple[dict[int, object], ...]]:
    """torch.export dynamic_shapes of the graph's inputs (state included), from the spec's own axes: every
    symbolic axis is Dim.AUTO, so the exporter finds the relations between them itself (a state's "height//8"
    against the input's height), every fixed axis stays static. The exporter's own dim names do not matter:
    declare_io_shapes writes the spec's names (the manifest's dynamic axes) onto the graph afterwards, and
    check_graph compares every dim with the spec, so an axis the exporter fixed is an error, not a silent
    specialization. One tuple per `*args` of GraphModule.forward."""
    auto = torch.export.Dim.AUTO
    return (tuple({axis: auto for axis in t.dynamic_axes} for t in spec.all_inputs),)


def export_graph(model: nn.Module, spec: GraphSpec, path: Path, opset: int, exporter: str = DYNAMO) -> str:
    """torch.onnx.export of `model.<spec.method>` to `path` (atomically), names and axes from `spec`, with
    `exporter` (dynamo: torch.export-based; torchscript: the legacy tracer). Returns the exporter used."""
    if not hasattr(model, spec.method):
        raise ModelFormatError(f"{type(model).__name__} has no method {spec.method!r} for the {spec.name} "
                               f"graph")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
    if exporter == DYNAMO and opset < DYNAMO_MIN_OPSET:
        raise ValueError(f"the dynamo exporter writes opset {DYNAMO_MIN_OPSET} and up, not {opset} "
                         f"(choose_exporter)")
    module = GraphModule(model, spec.method).eval()
    with atomic_path(path) as tmp:
        if exporter == DYNAMO:
            _export_dynamo(module, spec, tmp, opset)
        else:
            _export_torchscript(module, spec, tmp, opset)
    return exporter


def _export_dynamo(module: nn.Module, spec: GraphSpec, tmp: Path, opset: int) -> None:
    # The exporter and onnxscript's optimizer report progress and notes at INFO/WARNING level on their
    # loggers (and print to stdout); export's own log says what is exported, so they are kept to errors.
    # `_registration` warns, without torchvision (the CPU build of torch has none that loads), that it skips
    # torchvision's detection ops, which no VAE has.
    loggers = [logging.getLogger(name) for name in ("torch.onnx._internal.exporter._compat",
                                                    "torch.onnx._internal.exporter._registration",
                                                    "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # torch 2.13's exporter still uses a pytree spec class it deprecates itself (fixed in 2.14).
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            torch.onnx.export(
                module, trace_inputs(spec, env=export_env(spec)), str(tmp), dynamo=True,
                opset_version=opset, input_names=spec.input_names, output_names=spec.output_names,
                dynamic_shapes=dynamic_shapes(spec), external_data=False, optimize=True, verbose=False,
            )
    except Exception as exc:
        # The exporter wraps what the model raised while traced (an adapter's contract check: a ConfigError)
        # in its own TorchExportError; the user gets that error itself, as from the legacy exporter.
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, VaeDeployError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_torchscript(module: nn.Module, spec: GraphSpec, tmp: Path, opset: int) -> None:
    dynamic_axes = {t.name: t.dynamic_axes for t in spec.all_inputs + spec.all_outputs if t.dynamic_axes}
    with warnings.catch_warnings():
        # Deprecation of the legacy exporter: only graphs in LEGACY_GRAPHS (or an explicit choice) get here.
        # Tracer warnings come from the models' static layout asserts; the parity check at several batch and
        # chunk sizes that follows is what proves the traced graph general.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Strided slices (diffusers' VAEs have them) stay unfolded: a note about speed, not correctness.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            module, trace_inputs(spec, env=spec.example_env()), str(tmp), dynamo=False,
            opset_version=opset, input_names=spec.input_names, output_names=spec.output_names,
            dynamic_axes=dynamic_axes, do_constant_folding=True,
        )


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type
            for v in list(graph.value_info) + list(graph.input) + list(graph.output)}


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def drop_noop_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Cast nodes that cast a float32 tensor to float32 (the tracer writes one for each `.to(device)`
    and `type_as` in diffusers' Wan VAE), rewiring their consumers to the cast's input.

    Why: onnxconverter_common's fp16 conversion (1.16) pairs its own input cast with such a no-op cast and
    crashes ("'list' object has no attribute 'input'") when that cast feeds several nodes. A cast whose
    output is a graph output is kept (the output name is the contract)."""
    types = _elem_types(model)
    graph_outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        if (_cast_to(node) == onnx.TensorProto.FLOAT and node.output[0] not in graph_outputs
                and types.get(node.input[0]) == onnx.TensorProto.FLOAT):
            rename[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    if rename:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return model


def isolate_graph_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every graph output that other nodes also read its own Identity node, the internal readers
    keeping the producer's tensor.

    Why: with keep_io_types the fp16 converter casts each graph output back to float32 under the output's
    name, and a node that also read that tensor inside the graph (a Wan first-chunk graph returns a cache
    it goes on using) would then be fed the float32 copy, which ONNX refuses next to float16 inputs."""
    outputs = {o.name for o in model.graph.output}
    read = {name for node in model.graph.node for name in node.input} & outputs
    if not read:
        return model
    for node in model.graph.node:
        node.output[:] = [f"{name}__internal" if name in read else name for name in node.output]
        node.input[:] = [f"{name}__internal" if name in read else name for name in node.input]
    model.graph.node.extend(onnx.helper.make_node("Identity", [f"{name}__internal"], [name],
                                                  name=f"{name}__output") for name in sorted(read))
    return model


def convert_fp16(path: Path, keep_io_types: bool) -> None:
    from onnxconverter_common import float16

    fp32 = isolate_graph_outputs(drop_noop_casts(onnx.load(str(path))))
    # Casts from integers to float32 (attention's 1/sqrt(head_dim) from a shape) stay float32 nodes: the
    # converter would declare their output float16 but leave `to` at float32, which the checker refuses.
    types = _elem_types(fp32)
    keep_fp32 = [n.name for n in fp32.graph.node if _cast_to(n) == onnx.TensorProto.FLOAT
                    and types.get(n.input[0]) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    # So do ConstantOfShape nodes filling float32, `value` unset (float32 zeros) or float32 (the dynamo
    # exporter writes one for each torch.zeros, e.g. Wan's zero cache in its first-chunk graphs): the converter
    # declares their output float16 but leaves the fill float32, which strict shape inference refuses.
    keep_fp32 += [n.name for n in fp32.graph.node if n.op_type == "ConstantOfShape"
                     and all(a.t.data_type == onnx.TensorProto.FLOAT for a in n.attribute if a.name == "value")]
    with warnings.catch_warnings():
        # "the float32 number 1e-12 will be truncated to 1e-07": norm epsilons below fp16's range, where the
        # parity check that follows judges the result.
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        model = float16.convert_float_to_float16(fp32, keep_io_types=keep_io_types,
                                                 node_block_list=keep_fp32)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param if d.HasField("dim_param") else None)
    return dims


def declare_io_shapes(path: Path, spec: GraphSpec) -> None:
    """Write the spec's dims onto the graph's inputs/outputs where the exporter left them symbolic.

    The legacy exporter names some static output dims itself (mu's latent dim after `chunk` comes out as
    "Slicemu_dim_1"); the spec is the contract, so its fixed sizes and axis names are declared in the file.
    A dim the exporter fixed to another value is a real mismatch and is left for check_graph to report.
    Whether the declaration is true is then checked on every run: runners compare each output's shape
    with the spec (runtime/runner.py), starting with the parity check right after export.
    """
    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    infos = [i for i in model.graph.input if i.name not in initializers] + list(model.graph.output)
    by_name = {t.name: t for t in spec.all_inputs + spec.all_outputs}
    changed = False
    for info in infos:
        t = by_name.get(info.name)
        dims = info.type.tensor_type.shape.dim
        if t is None or len(dims) != len(t.shape):
            continue
        for d, want in zip(dims, t.shape, strict=True):
            if d.HasField("dim_value"):
                continue
            if isinstance(want, int):
                d.dim_value = want
            else:
                d.dim_param = want
            changed = True
    if changed:
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))


def check_graph(path: Path, spec: GraphSpec, shown: Path | None = None) -> onnx.ModelProto:
    """onnx.checker (full) + strict shape inference, then names, axes and dtypes against the spec; errors
    name the graph as `shown` (the file's final path, when it is being built under a temporary folder)."""
    model = onnx.load(str(path))
    name = shown or path
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelFormatError(f"{name} fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    got_in, got_out = [i.name for i in inputs], [o.name for o in graph.output]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise ModelFormatError(f"{name}: graph has inputs {got_in} / outputs {got_out}, the spec says "
                               f"{spec.input_names} / {spec.output_names}")
    for info, t in zip(list(inputs) + list(graph.output), spec.all_inputs + spec.all_outputs, strict=True):
        dims = _dims(info)
        if dims != list(t.shape):
            raise ModelFormatError(f"{name}: {t.name} has dims {dims}, the spec says {list(t.shape)}")
        elem_type = info.type.tensor_type.elem_type
        if elem_type != _ONNX_DTYPES[t.dtype]:
            raise ModelFormatError(f"{name}: {t.name} has ONNX element type "
                                   f"{onnx.TensorProto.DataType.Name(elem_type)}, the spec says {t.dtype}")
    return model


def _with_io_dtype(spec: GraphSpec, dtype: str) -> GraphSpec:
    def cast(t: TensorSpec) -> TensorSpec:
        return replace(t, dtype=dtype)

    return replace(spec, inputs=[cast(t) for t in spec.inputs], outputs=[cast(t) for t in spec.outputs],
                   state=[replace(s, dtype=dtype) for s in spec.state])


def _quantize(work: Path, fp32: Manifest, profile: ExportProfile, out_dir: Path,
              log: Callable[[str], None]) -> dict[str, GraphSpec]:
    """Quantize the exported fp32 graphs (described by `fp32`) in `work` in place; returns the graph specs
    with the int8 parity rule. Messages name the files as they will be in `out_dir`."""
    settings, specs = profile.quantization, fp32.graphs
    clips = calibration_clips(settings, fp32)
    log(f"calibrating int8 on {sum(c.shape[1] for c in clips)} frames of {', '.join(settings.calibration)}")
    with get_backend("ort-cpu")(work, manifest=fp32) as runner:
        feeds = calibration_feeds(runner, clips, settings.chunk)
    for spec in specs.values():
        log(f"quantizing {spec.name} ({', '.join(settings.op_types)}) -> {out_dir / spec.file}")
        quantize_graph(work / spec.file, feeds[spec.name], settings)
        declare_io_shapes(work / spec.file, spec)
        check_graph(work / spec.file, spec, out_dir / spec.file)
    return {name: replace(spec, tolerance=replace(spec.tolerance, min_psnr_db=settings.min_psnr_db))
            for name, spec in specs.items()}


def _producer(model: nn.Module) -> dict[str, str]:
    """Versions of what made the folder. A diffusers model's reference needs diffusers to load: its version
    here also tells `verify` that (export/jobs.py choose_reference)."""
    import onnxruntime

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "vae_deploy": vae_deploy.__version__}
    try:
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    except ImportError:
        pass
    if getattr(getattr(model, "config", None), "class_name", ""):  # an adapted diffusers model
        import diffusers

        versions["diffusers"] = diffusers.__version__
    return versions


def _preprocessing(encoder: GraphSpec) -> dict:
    t = encoder.inputs[0]
    leading = 2 if t.layout.startswith("NT") else 1  # batch (and time) axes come before one image
    return {"input": t.name, "layout": t.layout, "dtype": t.dtype,
            "value_range": list(t.value_range) if t.value_range else None,
            "image_shape": list(t.shape[leading:])}


def export_model(source: Path | ModelSource, out_dir: Path, profile: ExportProfile | None = None,
                 real_inputs: np.ndarray | None = None, parity_backend: str = DEFAULT_BACKEND,
                 log: Callable[[str], None] = lambda msg: None,
                 overwrite: bool = True) -> tuple[Manifest, ParityReport]:
    """Export a model (a checkpoint folder, or any ModelSource: export/sources.py) to a model folder and
    measure parity; returns (manifest, report).

    The folder is written as a unit (export/publish.py): built beside `out_dir` and swapped in when
    complete; an existing model folder there is replaced (its engines/ cache is kept: engines are keyed by
    the graphs' content, so stale ones are never loaded) unless `overwrite` is False, which refuses a
    non-empty `out_dir`. The manifest is written even when parity fails (its report says so, and callers
    decide, e.g. the CLI exits 1), so the failing folder can be inspected with `vae-deploy verify`.
    """
    profile = profile or ExportProfile()
    out_dir = Path(out_dir)
    if not isinstance(source, ModelSource):
        source = open_model_source(Path(source))
    model, config = source.module.eval(), source.config
    specs = graph_specs(config["kind"], model.config, model)
    if source.graphs is not None:  # re-profiling a model folder: refused up front when its graphs do not fit
        check_apart(source.graphs.folder, out_dir, "the re-profiled folder")
        source.graphs.check_reuse(specs, profile.opset)
    if profile.io_dtype != "float32":
        specs = {name: _with_io_dtype(spec, profile.io_dtype) for name, spec in specs.items()}
    if profile.precision == "int8":
        check_quantizable(config["kind"], specs["encoder"], real_inputs)
    with staged_folder(out_dir, overwrite=overwrite, carry=(ENGINE_DIR,)) as work:
        manifest, report = _write_folder(source, specs, work, profile, real_inputs, parity_backend, out_dir,
                                         log)
    return manifest, report


def _write_folder(source: ModelSource, specs: dict[str, GraphSpec], work: Path, profile: ExportProfile,
                  real_inputs: np.ndarray | None, parity_backend: str, out_dir: Path,
                  log: Callable[[str], None]) -> tuple[Manifest, ParityReport]:
    """Every file of the model folder, written into the empty folder `work` (logged under `out_dir`, the
    name it will have)."""
    model, config = source.module, source.config
    # Graphs made of parts are joined after their parts are traced (and before any conversion, so that
    # the join is of fp32 graphs like every other export step's input)
    order = list(specs) if source.graphs is not None else sorted(specs, key=lambda n: bool(specs[n].parts))
    for name in order:
        spec = specs[name]
        path = work / spec.file
        if source.graphs is not None:  # the fp32 graph of a model folder, self-contained, its exporter kept
            log(f"reusing {spec.name} from {source.graphs.folder} (no tracing) -> {out_dir / spec.file}")
            specs[name] = source.graphs.take(spec, path)
        elif spec.parts:
            log(f"joining {spec.name} from {', '.join(spec.parts)} -> {out_dir / spec.file}")
            compose_parts([work / specs[part].file for part in spec.parts], spec, path)
            specs[name] = replace(spec, exporter=specs[spec.parts[0]].exporter)
        else:
            exporter = choose_exporter(config["kind"], spec, profile.opset)
            log(f"exporting {spec.name} ({spec.method}, {exporter}) -> {out_dir / spec.file}")
            specs[name] = replace(spec, exporter=export_graph(model, spec, path, profile.opset, exporter))
    for spec in specs.values():
        path = work / spec.file
        if profile.precision == "fp16":
            convert_fp16(path, profile.keep_io_types)
        declare_io_shapes(path, spec)
        check_graph(path, spec, out_dir / spec.file)
    # How each graph may be tiled, measured on the module and the fp32/fp16 graphs while they are inline
    tiling = tiling_records(config["kind"], model, specs, work, log)
    preprocessing = _preprocessing(specs["encoder"])
    recipe_data = (config.get("recipe") or {}).get("data") or {}
    if recipe_data.get("short_side"):  # video runs: the working resolution `vae-deploy run` defaults to
        preprocessing["short_side"] = int(recipe_data["short_side"])
    normalization = getattr(model, "latent_normalization", None)
    if normalization:  # the diffusion model's latent space, applied by the runtime (runtime/latent_space.py)
        preprocessing["latent_normalization"] = latent_normalization_record(normalization,
                                                                            int(model.latent_channels))
    if profile.precision == "int8":
        fp32 = Manifest(kind=config["kind"], model=to_dict(model.config), graphs=specs, precision="fp32",
                        opset=profile.opset, preprocessing=preprocessing)
        specs = _quantize(work, fp32, profile, out_dir, log)
    files = [spec.file for spec in specs.values()]
    # Graphs that share weights (a first-chunk graph and its steady graph) read them from one file, each
    # tensor once; last, because fp16 conversion and int8 quantization want the tensors inline.
    if uses_shared_weights(specs.values()):
        shared = share_weights(work, files)
        log(f"storing each weight once: {shared.tensors} tensors for {shared.references} initializers of "
            f"{len(files)} graphs -> {out_dir / shared.file} ({shared.file_bytes / 1e6:.1f} MB)")
    # external data files (the shared weights; any graph over 2 GB) are hashed like the graphs
    files += sorted({name for spec in specs.values() for name in external_data_files(work, spec.file)})
    files += [f"{REFERENCE_DIR}/{name}" for name in source.write_reference(work / REFERENCE_DIR)]
    export_profile = profile.to_dict()
    if source.graphs is not None:  # where the graphs came from: the folder and its manifest's sha256
        export_profile["reprofiled_from"] = source.graphs.record()
    manifest = Manifest(
        kind=config["kind"], model=to_dict(model.config), graphs=specs, precision=profile.precision,
        opset=profile.opset, preprocessing=preprocessing, producer=_producer(model),
        files=hash_files(work, files), export_profile=export_profile,
        cpu_requirements=cpu_requirements(profile.quantization) if profile.precision == "int8" else {},
        tiling=tiling,
    )
    # A --from model's reference is rebuilt by the factory the user named for this export, and only then
    entry_point = getattr(model.config, "entry_point", None) or None
    with get_backend("torch")(work, manifest=manifest, **({"entry_point": entry_point} if entry_point else {})
                              ) as ref:
        log(f"storing the reference's outputs for torch-free checks -> {out_dir / GOLDEN_FILE}")
        files.append(write_golden(work, ref, real_inputs))
        log(f"checking parity: {parity_backend} vs torch")
        with get_backend(parity_backend)(work, manifest=manifest) as backend:
            report = check_parity(backend, ref, real_inputs, tuple(profile.parity_batch_sizes),
                                  log=log)
    manifest.files = hash_files(work, files)
    manifest.parity = report.to_dict()
    write_manifest(work, manifest)
    return manifest, report
