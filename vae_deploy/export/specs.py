"""Graph specs per model kind: a kind's record (models/registry.py `ModelKind.specs`) names one of the spec
builders registered here, function(kind, model config, model) -> {"encoder": GraphSpec, ...}.

The dataclasses themselves (TensorSpec, StateSpec, GraphSpec, Tolerance) live in runtime/spec.py because
the manifest carries them to a torch-free runtime; this module decides what each model kind's graphs are.

Two builders, registered by name (models name them, never import them: export is above models):
- "mlp", `mlp_specs`: the seed VAE. encoder: images (batch, 1, 28, 28) -> mu, logvar (batch, latent);
  decoder: z (batch, latent) -> images. No state.
- "video", `streaming_video_specs`: any video model with the step form (models/streaming.py), i.e. exposing
  `encode_step(chunk, *past) -> (mu, logvar, *present)`, `decode_step(z, *past) -> (frames, *present)`,
  `encoder_state_shapes(batch, height, width)`, `decoder_state_shapes(batch, latent_h, latent_w)`,
  `spatial_factor`, `temporal_factor`, `latent_channels` and `in_channels`. The state shapes are
  obtained by calling the model's own shape functions with symbols (SymDim), so the manifest records
  formulas such as "height//8" rather than one example's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vae_deploy.errors import ConfigError
from vae_deploy.runtime.spec import GraphSpec, StateSpec, SymDim, TensorSpec, Tolerance

__all__ = ["GraphSpec", "StateSpec", "SymDim", "TensorSpec", "Tolerance", "graph_specs", "register_spec"]

# (kind, model config, the model when the caller has it built already) -> graphs
SpecBuilder = Callable[[str, Any, Any], dict[str, GraphSpec]]

SPEC_BUILDERS: dict[str, SpecBuilder] = {}  # the name a ModelKind's `specs` gives -> builder
GRAPH_NAMES = ("encoder", "decoder")  # every model; first-rule models add encoder_first, decoder_first
FIRST_GRAPH_NAMES = ("encoder_first", "decoder_first")


def register_spec(name: str, builder: SpecBuilder) -> None:
    SPEC_BUILDERS[name] = builder


def graph_specs(kind: str, config: Any, model: Any = None) -> dict[str, GraphSpec]:
    """The graph specs of model kind `kind` with config `config` (`model`: that model, if built already)."""
    # The kinds' table imports torch, so it is read here, not at import: this module imports without torch.
    from vae_deploy.models.registry import model_kinds

    record = model_kinds().get(kind) if isinstance(kind, str) else None
    builder = SPEC_BUILDERS.get(record.specs) if record is not None else None
    if builder is None:
        known = ", ".join(sorted(k for k, r in model_kinds().items() if r.specs in SPEC_BUILDERS))
        raise ConfigError(f"no export spec for model kind {kind!r} (known: {known})")
    specs = builder(kind, config, model)
    parts = {part for spec in specs.values() for part in spec.parts}
    parts |= {specs[part].first_graph for part in parts if part in specs and specs[part].first_graph}
    if tuple(specs)[:2] != GRAPH_NAMES or not set(tuple(specs)[2:]) <= set(FIRST_GRAPH_NAMES) | parts:
        raise ConfigError(f"the spec of kind {kind!r} must define graphs {GRAPH_NAMES} (and may add "
                          f"{FIRST_GRAPH_NAMES} and the parts they name), got {tuple(specs)}")
    return specs


# ---------------------------------------------------------------- the seed MLP VAE


def mlp_specs(kind: str, config: Any, model: Any = None) -> dict[str, GraphSpec]:
    c, h, w = config.image_shape
    latent = config.latent_dim
    images = TensorSpec("images", ("batch", c, h, w), layout="NCHW", value_range=(0.0, 1.0))
    z = TensorSpec("z", ("batch", latent), layout="NC")
    encoder = GraphSpec(
        "encoder", inputs=[images],
        outputs=[TensorSpec("mu", ("batch", latent), layout="NC"),
                 TensorSpec("logvar", ("batch", latent), layout="NC")],
        method="encode", example_dims={"batch": 2},
    )
    decoder = GraphSpec("decoder", inputs=[z], outputs=[images], method="decode", example_dims={"batch": 2})
    return {"encoder": encoder, "decoder": decoder}


register_spec("mlp", mlp_specs)  # models/mlp.py's kind names it


# ---------------------------------------------------------------- video models with the step form


def _scaled(sym: SymDim, factor: int, down: bool) -> SymDim:
    if factor == 1:
        return sym
    return sym // factor if down else sym * factor


# fp32 parity floor of the video graphs (streamed ort-cpu vs the PyTorch full sequence). Trained conv
# VAEs give log-variances of magnitude ~10 whose fp32 rounding alone differs by ~1e-5 between backends.
VIDEO_TOLERANCE = Tolerance(max_abs=1e-4)


def streaming_video_specs(kind: str, config: Any, model: Any = None) -> dict[str, GraphSpec]:
    if model is None:
        from vae_deploy.models.registry import build_model  # torch: only when a video model is exported

        model = build_model(kind, config)
    s, tf = int(model.spatial_factor), int(model.temporal_factor)
    lc, ch = int(model.latent_channels), int(model.in_channels)
    first = int(getattr(model, "first_frames", 0) or 0)  # a first rule: models/adapters/contract.py
    has_logvar = bool(getattr(model, "has_logvar", True))
    # Our designs end in a sigmoid and Wan clamps, so values outside [0, 1] there are a fault (the fp16 guard
    # watches for them); an unclamped decoder (diffusers' AutoencoderKL) has no range to hold it to.
    out_range = (0.0, 1.0) if getattr(model, "output_clamped", True) else None
    batch, frames, height, width = SymDim("batch"), SymDim("frames"), SymDim("height"), SymDim("width")
    # The decoder's own symbols: its chunks are latent frames, so they get their own names.
    latent_frames, latent_h, latent_w = SymDim("latent_frames"), SymDim("latent_h"), SymDim("latent_w")
    enc_state = model.encoder_state_shapes(batch, height, width)
    dec_state = model.decoder_state_shapes(batch, latent_h, latent_w)

    def states(shapes: list) -> list[StateSpec]:
        return _states(shapes, 0)

    def presents(shapes: list) -> list[TensorSpec]:
        return [st.as_output() for st in states(shapes)]

    def latents(t) -> list[TensorSpec]:
        shape = (batch, t, lc, _scaled(height, s, True), _scaled(width, s, True))
        names = ("mu", "logvar") if has_logvar else ("mu",)
        return [TensorSpec(name, shape, layout="NTCHW") for name in names]

    def video(t, h, w) -> TensorSpec:
        return TensorSpec("video", (batch, t, ch, h, w), layout="NTCHW", value_range=(0.0, 1.0))

    def decoded(t) -> TensorSpec:
        return TensorSpec("video", (batch, t, ch, _scaled(latent_h, s, False), _scaled(latent_w, s, False)),
                          layout="NTCHW", value_range=out_range)

    def z(t) -> TensorSpec:
        return TensorSpec("z", (batch, t, lc, latent_h, latent_w), layout="NTCHW")

    encoder = GraphSpec(
        "encoder", inputs=[video(frames, height, width)], outputs=latents(_scaled(frames, tf, True)),
        state=states(enc_state), method="encode_step", tolerance=VIDEO_TOLERANCE,
        example_dims={"batch": 1, "frames": 4 * tf, "height": 4 * s, "width": 4 * s},
        stream_axis="frames", stream_chunks=(tf, 3 * tf),
        dim_multiples={"height": s, "width": s, "frames": tf}, max_parity_batch=2,
        first_graph="encoder_first" if first else "", first_length=first,
    )
    # Latent frames of a clip of `frames` frames, for TensorRT ranges given in video frames.
    if first:
        latent_count = f"1+(frames-{first}+{tf - 1})//{tf}"
    else:
        latent_count = f"(frames+{tf - 1})//{tf}" if tf > 1 else "frames"
    decoder = GraphSpec(
        "decoder", inputs=[z(latent_frames)], outputs=[decoded(_scaled(latent_frames, tf, False))],
        state=states(dec_state), method="decode_step", tolerance=VIDEO_TOLERANCE,
        example_dims={"batch": 1, "latent_frames": 4, "latent_h": 4, "latent_w": 4},
        stream_axis="latent_frames", stream_chunks=(1, 3), max_parity_batch=2,
        derived_dims={"latent_frames": latent_count, "latent_h": f"height//{s}", "latent_w": f"width//{s}"},
        first_graph="decoder_first" if first else "", first_length=1 if first else 0,
    )
    specs = {"encoder": encoder, "decoder": decoder}
    if first:
        # The first chunk's graphs: no state in, the steady graphs' state out (as outputs present_i).
        specs["encoder_first"] = GraphSpec(
            "encoder_first", inputs=[video(first, height, width)], outputs=latents(1) + presents(enc_state),
            method="encode_first", tolerance=VIDEO_TOLERANCE,
            example_dims={"batch": 1, "height": 4 * s, "width": 4 * s},
            dim_multiples={"height": s, "width": s}, max_parity_batch=2,
        )
        specs["decoder_first"] = GraphSpec(
            "decoder_first", inputs=[z(1)], outputs=[decoded(first)] + presents(dec_state),
            method="decode_first", tolerance=VIDEO_TOLERANCE,
            example_dims={"batch": 1, "latent_h": 4, "latent_w": 4}, max_parity_batch=2,
            derived_dims={"latent_h": f"height//{s}", "latent_w": f"width//{s}"},
        )
    if getattr(model, "split_point", None) is not None:
        specs.update(_split_specs(model, specs, latent_count))
        for name in GRAPH_NAMES + FIRST_GRAPH_NAMES:
            if name in specs:
                specs[name] = replace(specs[name], parts=_part_names(name))
    return specs


# ---------------------------------------------------------------- graphs in parts (LatentSplit)

# What each graph's parts are called, in the order they run: the encoder's pixel part first, the decoder's
# latent part first. A first-chunk graph's parts are its steady graph's parts + "_first".
PART_SUFFIXES = {"encoder": ("pixels", "latents"), "decoder": ("latents", "pixels")}


def is_part(graph: str) -> bool:
    """Whether `graph` is a part of a graph split at latent resolution (by its name)."""
    steady = graph[:-len("_first")] if graph.endswith("_first") else graph
    return any(steady == f"{whole}_{suffix}" for whole, suffixes in PART_SUFFIXES.items()
               for suffix in suffixes)


def part_runs_whole(graph: str) -> bool:
    """Whether `graph` is the latent-resolution part of a split graph, which runs on whole latent frames
    (the pixel-resolution part is the one that tiles)."""
    return is_part(graph) and "_latents" in graph


def _part_names(graph: str) -> tuple[str, ...]:
    steady, first = (graph[:-len("_first")], "_first") if graph.endswith("_first") else (graph, "")
    return tuple(f"{steady}_{suffix}{first}" for suffix in PART_SUFFIXES[steady])


def _split_specs(model: Any, whole: dict[str, GraphSpec], latent_count: str) -> dict[str, GraphSpec]:
    """The parts of a LatentSplit model's graphs (models/adapters/contract.py), each a graph of its own
    with the whole graph's streaming rules: features at latent resolution between them, the whole graph's
    state shared out in order (the part that runs first holds the first ones)."""
    point = model.split_point
    s, lc = int(model.spatial_factor), int(model.latent_channels)
    encoder, decoder = whole["encoder"], whole["decoder"]
    batch, latent_frames = SymDim("batch"), SymDim("latent_frames")
    latent_h, latent_w = SymDim("latent_h"), SymDim("latent_w")
    ke, kd = point.encoder_pixel_states, point.decoder_latent_states

    def features(name: str, channels: int, t, h, w) -> TensorSpec:
        return TensorSpec(name, (batch, t, channels, h, w), layout="NTCHW")

    def steady(graph: GraphSpec, name: str, inputs: list, outputs: list, state: list, method: str,
               **rules) -> GraphSpec:
        return replace(graph, name=name, inputs=inputs, outputs=outputs, state=state, method=method,
                       first_graph=f"{name}_first" if graph.first_graph else "", exporter="", parts=(),
                       **rules)

    def first(graph: GraphSpec, name: str, inputs: list, outputs: list, method: str, **rules) -> GraphSpec:
        return GraphSpec(name, inputs=inputs, outputs=outputs, method=method, tolerance=graph.tolerance,
                         max_parity_batch=graph.max_parity_batch, **rules)

    # the encoder: pixels (tiled) -> features at latent resolution -> latents (whole)
    pixel_state, latent_shapes = encoder.state[:ke], model.encoder_latent_state_shapes(batch, latent_h,
                                                                                        latent_w)
    video_in = encoder.inputs[0]
    frames, height, width = video_in.shape[1], SymDim(video_in.shape[3]), SymDim(video_in.shape[4])
    enc_features = features("features", point.encoder_channels, SymDim(frames) // int(model.temporal_factor),
                            height // s, width // s)
    latent_features = features("features", point.encoder_channels, latent_frames, latent_h, latent_w)
    names = [t.name for t in encoder.outputs]
    latents = [TensorSpec(n, (batch, latent_frames, lc, latent_h, latent_w), layout="NTCHW") for n in names]
    latent_rules = {"example_dims": {"batch": 1, "latent_frames": 4, "latent_h": 4, "latent_w": 4},
                    "stream_axis": "latent_frames", "stream_chunks": (1, 3), "dim_multiples": {},
                    "derived_dims": {"latent_frames": latent_count, "latent_h": f"height//{s}",
                                     "latent_w": f"width//{s}"}}
    one = replace(latents[0], shape=(batch, 1, lc, latent_h, latent_w))
    parts = {
        "encoder_pixels": steady(encoder, "encoder_pixels", [video_in], [enc_features], pixel_state,
                                 "encode_pixels_step"),
        "encoder_latents": steady(encoder, "encoder_latents", [latent_features], latents,
                                  _states(latent_shapes, ke), "encode_latents_step",
                                  first_length=1 if encoder.first_graph else 0, **latent_rules),
    }
    # the decoder: latents (whole) -> features at latent resolution -> pixels (tiled)
    dec_features = features("features", point.decoder_channels, latent_frames, latent_h, latent_w)
    parts["decoder_latents"] = steady(decoder, "decoder_latents", decoder.inputs, [dec_features],
                                      decoder.state[:kd], "decode_latents_step")
    parts["decoder_pixels"] = steady(decoder, "decoder_pixels", [dec_features], decoder.outputs,
                                     decoder.state[kd:], "decode_pixels_step")
    if "encoder_first" in whole:
        enc_first, dec_first = whole["encoder_first"], whole["decoder_first"]
        enc_presents, dec_presents = enc_first.outputs[len(names):], dec_first.outputs[1:]
        one_features = replace(enc_features,
                               shape=(batch, 1, point.encoder_channels, height // s, width // s))
        parts["encoder_pixels_first"] = first(
            enc_first, "encoder_pixels_first", enc_first.inputs, [one_features] + enc_presents[:ke],
            "encode_pixels_first", example_dims=enc_first.example_dims, dim_multiples=enc_first.dim_multiples)
        parts["encoder_latents_first"] = first(
            enc_first, "encoder_latents_first",
            [replace(latent_features, shape=(batch, 1, point.encoder_channels, latent_h, latent_w))],
            [replace(one, name=n) for n in names] + [st.as_output() for st in _states(latent_shapes, ke)],
            "encode_latents_first", example_dims={"batch": 1, "latent_h": 4, "latent_w": 4},
            derived_dims={"latent_h": f"height//{s}", "latent_w": f"width//{s}"})
        dec_one = replace(dec_features, shape=(batch, 1, point.decoder_channels, latent_h, latent_w))
        rules = {"example_dims": dec_first.example_dims, "derived_dims": dec_first.derived_dims}
        parts["decoder_latents_first"] = first(dec_first, "decoder_latents_first", dec_first.inputs,
                                               [dec_one] + dec_presents[:kd], "decode_latents_first", **rules)
        parts["decoder_pixels_first"] = first(dec_first, "decoder_pixels_first", [dec_one],
                                              dec_first.outputs[:1] + dec_presents[kd:],
                                              "decode_pixels_first", **rules)
    return parts


def _states(shapes: list, start: int) -> list[StateSpec]:
    return [StateSpec(f"past_{i}", f"present_{i}", tuple(shape)) for i, shape in enumerate(shapes, start)]


register_spec("video", streaming_video_specs)  # every kind with the step form, adapted VAEs too
