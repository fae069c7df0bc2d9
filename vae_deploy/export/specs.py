"""Graph specs per model kind: a registry kind -> function(model config) -> {"encoder": GraphSpec, ...}.

The dataclasses themselves (TensorSpec, StateSpec, GraphSpec, Tolerance) live in runtime/spec.py because
the manifest carries them to a torch-free runtime; this module decides what each model kind's graphs are.

Two builders:
- `mlp_specs`: the seed VAE. encoder: images (batch, 1, 28, 28) -> mu, logvar (batch, latent);
  decoder: z (batch, latent) -> images. No state.
- `streaming_video_specs`: any video model with the step form (models/streaming.py), i.e. exposing
  `encode_step(chunk, *past) -> (mu, logvar, *present)`, `decode_step(z, *past) -> (frames, *present)`,
  `encoder_state_shapes(batch, height, width)`, `decoder_state_shapes(batch, latent_h, latent_w)`,
  `spatial_factor`, `temporal_factor`, `latent_channels` and `in_channels`. The state shapes are
  obtained by calling the model's own shape functions with symbols (SymDim), so the manifest records
  formulas such as "height//8" rather than one example's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vae_deploy.errors import ConfigError
from vae_deploy.runtime.spec import GraphSpec, StateSpec, SymDim, TensorSpec, Tolerance

__all__ = ["GraphSpec", "StateSpec", "SymDim", "TensorSpec", "Tolerance", "graph_specs", "register_spec"]

SpecBuilder = Callable[[str, Any], dict[str, GraphSpec]]  # (kind, model config) -> graphs

SPEC_BUILDERS: dict[str, SpecBuilder] = {}
GRAPH_NAMES = ("encoder", "decoder")


def register_spec(kind: str, builder: SpecBuilder) -> None:
    SPEC_BUILDERS[kind] = builder


def graph_specs(kind: str, config: Any) -> dict[str, GraphSpec]:
    """The encoder and decoder specs of model kind `kind` with config `config`."""
    builder = SPEC_BUILDERS.get(kind)
    if builder is None:
        known = ", ".join(sorted(SPEC_BUILDERS))
        raise ConfigError(f"no export spec for model kind {kind!r} (known: {known})")
    specs = builder(kind, config)
    if tuple(specs) != GRAPH_NAMES:
        raise ConfigError(f"the spec of kind {kind!r} must define graphs {GRAPH_NAMES}, got {tuple(specs)}")
    return specs


# ---------------------------------------------------------------- the seed MLP VAE


def mlp_specs(kind: str, config: Any) -> dict[str, GraphSpec]:
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


register_spec("mlp", mlp_specs)


# ---------------------------------------------------------------- video models with the step form


def _scaled(sym: SymDim, factor: int, down: bool) -> SymDim:
    if factor == 1:
        return sym
    return sym // factor if down else sym * factor


# fp32 parity floor of the video graphs (issue 5: streamed ort-cpu vs the PyTorch full sequence). Trained conv
# VAEs give log-variances of magnitude ~10 whose fp32 rounding alone differs by ~1e-5 between backends.
VIDEO_TOLERANCE = Tolerance(max_abs=1e-4)


def streaming_video_specs(kind: str, config: Any) -> dict[str, GraphSpec]:
    from vae_deploy.models.registry import build_model  # torch: only when a video model is exported

    model = build_model(kind, config)
    s, tf = int(model.spatial_factor), int(model.temporal_factor)
    lc, ch = int(model.latent_channels), int(model.in_channels)
    batch, frames, height, width = SymDim("batch"), SymDim("frames"), SymDim("height"), SymDim("width")
    # The decoder's own symbols: its chunks are latent frames, so they get their own names.
    latent_frames, latent_h, latent_w = SymDim("latent_frames"), SymDim("latent_h"), SymDim("latent_w")

    def states(shapes: list) -> list[StateSpec]:
        return [StateSpec(f"past_{i}", f"present_{i}", tuple(shape)) for i, shape in enumerate(shapes)]

    latent_shape = (batch, _scaled(frames, tf, True), lc, _scaled(height, s, True), _scaled(width, s, True))
    encoder = GraphSpec(
        "encoder",
        inputs=[TensorSpec("video", (batch, frames, ch, height, width), layout="NTCHW",
                           value_range=(0.0, 1.0))],
        outputs=[TensorSpec("mu", latent_shape, layout="NTCHW"),
                 TensorSpec("logvar", latent_shape, layout="NTCHW")],
        state=states(model.encoder_state_shapes(batch, height, width)),
        method="encode_step", tolerance=VIDEO_TOLERANCE,
        example_dims={"batch": 1, "frames": 4 * tf, "height": 4 * s, "width": 4 * s},
        stream_axis="frames", stream_chunks=(tf, 3 * tf),
        dim_multiples={"height": s, "width": s, "frames": tf}, max_parity_batch=2,
    )
    video_shape = (batch, _scaled(latent_frames, tf, False), ch, _scaled(latent_h, s, False),
                   _scaled(latent_w, s, False))
    decoder = GraphSpec(
        "decoder",
        inputs=[TensorSpec("z", (batch, latent_frames, lc, latent_h, latent_w), layout="NTCHW")],
        outputs=[TensorSpec("video", video_shape, layout="NTCHW", value_range=(0.0, 1.0))],
        state=states(model.decoder_state_shapes(batch, latent_h, latent_w)),
        method="decode_step", tolerance=VIDEO_TOLERANCE,
        example_dims={"batch": 1, "latent_frames": 4, "latent_h": 4, "latent_w": 4},
        stream_axis="latent_frames", stream_chunks=(1, 3), max_parity_batch=2,
        derived_dims={"latent_frames": f"(frames+{tf - 1})//{tf}" if tf > 1 else "frames",
                      "latent_h": f"height//{s}", "latent_w": f"width//{s}"},
    )
    return {"encoder": encoder, "decoder": decoder}


for _kind in ("frame", "temporal", "causal3d"):  # the video kinds of issue 4 (models/frame.py, ...)
    register_spec(_kind, streaming_video_specs)
