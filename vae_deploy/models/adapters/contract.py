"""The adapter contract: how a VAE that vae-deploy did not train enters export, and the wrapper that turns
any module keeping it into the streaming step form every exporter and runner already handles.

A module keeps the contract when it has (layout: images NCHW, video NTCHW, float32 in [0, 1] at this
boundary, whatever range the model uses inside; latents N[T]Chw in the model's raw latent space):

    in_channels: int              image channels (3 for RGB)
    latent_channels: int
    spatial_factor: int           frame height and width must be multiples of it; latents are H/s x W/s

  a frame VAE (every frame on its own, no state):
    encode(images NCHW) -> mean, or (mean, logvar)
    decode(z NChw) -> images NCHW

  a causal video VAE (frames in order, its cache carried as explicit state tensors):
    temporal_factor: int          frames per latent frame in the steady state (Wan: 4)
    first_frames: int             frames the FIRST latent frame covers when the first chunk has its own rule
                                  (Wan: 1, so clips hold 1 + 4k frames); 0 when every latent frame covers
                                  temporal_factor frames
    encoder_state_shapes(batch, height, width) -> [shape, ...]
    decoder_state_shapes(batch, latent_h, latent_w) -> [shape, ...]
                                  the steady-state shapes of the past/present tensors, using only + - * //
                                  on their arguments (export calls them with symbols to record formulas)
    encode_step(video (N, k*tf, C, H, W), *past) -> (mean, logvar, *present)
    decode_step(z (N, t, Cl, h, w), *past) -> (video (N, t*tf, C, H, W), *present)
                                  from zero past tensors when first_frames is 0
    encode_first(video (N, first_frames, C, H, W)) -> (mean, logvar, *present)     only with first_frames
    decode_first(z (N, 1, Cl, h, w)) -> (video (N, first_frames, C, H, W), *present)
                                  the first chunk's rule; `present` has the steady-state shapes, so the
                                  step that follows takes it as `past`

  optional, either kind:
    has_logvar: bool = True       False: the encoder gives the mean only (AutoencoderTiny), and the tuples
                                  above hold no logvar
    output_clamped: bool = False  True when decoded frames are clamped to [0, 1] (Wan clamps; AutoencoderKL
                                  does not), so a value outside it is a fault the fp16 guard acts on
    latent_normalization: dict    {"scale": s, "shift": m}, each a number or one per latent channel: the
                                  space a diffusion model works in is (z - m) * s (runtime/latent_space.py)
    reference_encode(video NTCHW) -> mean | (mean, logvar)
    reference_decode(z NTChw) -> video
                                  the model's own whole-clip computation (diffusers' `vae.encode(x)`), the
                                  reference that streamed graphs are checked against; without them the
                                  reference is the first rule then one step over the rest of the clip

`AdaptedVAE` wraps such a module as a `VideoVAE` (models/streaming.py): a frame VAE becomes a stateless
video model (frames folded into the batch), a causal one keeps its steps. Its state_dict is the wrapped
module's under `inner.`, which is what a model folder's reference/ stores, and `AdapterConfig` says how
to build the wrapped module again without weights (a diffusers class from its config, or the entry point),
so the PyTorch reference loads like any checkpoint (models/checkpoint.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.models.streaming import VideoVAE

ENTRY_POINT_KIND = "entry-point"


@dataclass
class AdapterConfig:
    class_name: str = ""  # a diffusers class (config.json's _class_name); "" for an entry point
    entry_point: str = ""  # "package.module:factory" returning a module that keeps the contract
    config: dict = field(default_factory=dict)  # the diffusers config (config.json without "_" keys)

    def __post_init__(self):
        if bool(self.class_name) == bool(self.entry_point):
            raise ValueError("an adapter config names either a diffusers class_name or an entry_point")


def import_entry_point(spec: str) -> Callable[[], nn.Module]:
    """"package.module:factory" -> the factory; one ConfigError line for each way it can be wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--from {spec!r} must be 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as exc:  # sys.exit() in user code must not end the export as if it had succeeded
        raise ConfigError(f"--from {spec}: importing {module_name} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # noqa: BLE001 - any error of the user's module is theirs to see, in one line
        raise ConfigError(f"--from {spec}: cannot import {module_name} ({type(exc).__name__}: {exc})"
                          ) from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"--from {spec}: {module_name} has no {attr}")
    if not callable(factory):
        raise ConfigError(f"--from {spec}: {attr} is not callable")
    return factory


def call_factory(spec: str) -> nn.Module:
    try:
        module = import_entry_point(spec)()
    except ConfigError:
        raise
    except SystemExit as exc:  # any code, 0 too: the export has no module, so it failed
        raise ConfigError(f"--from {spec}: the factory called sys.exit({exc.code!r}) instead of returning a "
                          f"module") from None
    except Exception as exc:  # noqa: BLE001 - the factory is user code
        raise ConfigError(f"--from {spec}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"--from {spec}: the factory returned a {type(module).__name__}, not a torch "
                          f"module")
    return module


def _int_attr(module: nn.Module, name: str, where: str, least: int = 1, default: int | None = None) -> int:
    value = getattr(module, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where}: {name} must be an integer >= {least}, got {value!r}")
    return value


def check_contract(module: nn.Module, where: str) -> None:
    """Refuse a module that does not keep the contract, naming the first thing it lacks."""
    for name in ("in_channels", "latent_channels", "spatial_factor"):
        _int_attr(module, name, where)
    causal = hasattr(module, "encode_step") or hasattr(module, "decode_step")
    methods = ["encode_step", "decode_step", "encoder_state_shapes", "decoder_state_shapes"] if causal \
        else ["encode", "decode"]
    if causal:
        _int_attr(module, "temporal_factor", where)
        if _int_attr(module, "first_frames", where, least=0, default=0):
            methods += ["encode_first", "decode_first"]
    missing = [m for m in methods if not callable(getattr(module, m, None))]
    if missing:
        kind = "a causal video VAE" if causal else "a frame VAE"
        raise ConfigError(f"{where} is {kind} without {', '.join(missing)} (see the adapter contract in "
                          f"docs/adapters.md)")
    norm = getattr(module, "latent_normalization", None)
    if norm is not None and (not isinstance(norm, dict) or set(norm) - {"scale", "shift"}):
        raise ConfigError(f"{where}: latent_normalization must be a dict with 'scale' and/or 'shift', "
                          f"got {norm!r}")


def _pair(out: Any, has_logvar: bool, where: str) -> tuple[torch.Tensor, ...]:
    """An encoder's result as (mean, logvar) or (mean,)."""
    out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    if has_logvar and len(out) < 2:
        # Else the graph would name two outputs of one, and the exporter fail without saying why.
        raise ConfigError(f"{where}: encode gave a mean only; a module whose encoder has no logvar sets "
                          f"has_logvar = False (see the adapter contract in docs/adapters.md)")
    return out[:2] if has_logvar else out[:1]


class AdaptedVAE(VideoVAE):
    """A contract module (the module docstring) as a VideoVAE; `kind` is the registry name of its family."""

    def __init__(self, config: AdapterConfig, inner: nn.Module | None = None, kind: str | None = None,
                 entry_point: str | None = None):
        """`entry_point`: the factory the caller named, the only one build_inner may import."""
        super().__init__()
        from vae_deploy.models.adapters import build_inner, kind_for  # the family table, below this class

        self.config = config
        self.kind = kind or kind_for(config)
        self.where = where = config.entry_point or config.class_name
        self.inner = inner if inner is not None else build_inner(config, entry_point)
        check_contract(self.inner, where)
        m = self.inner
        self.in_channels, self.latent_channels = int(m.in_channels), int(m.latent_channels)
        self.spatial_factor = int(m.spatial_factor)
        self.causal = hasattr(m, "encode_step")
        self.temporal_factor = int(getattr(m, "temporal_factor", 1)) if self.causal else 1
        self.first_frames = int(getattr(m, "first_frames", 0) or 0) if self.causal else 0
        self.has_logvar = bool(getattr(m, "has_logvar", True))
        self.latent_normalization = getattr(m, "latent_normalization", None)
        self.output_clamped = bool(getattr(m, "output_clamped", False))

    # ---- state shapes (none for frame VAEs)
    def encoder_state_shapes(self, batch, height, width) -> list[tuple]:
        return list(self.inner.encoder_state_shapes(batch, height, width)) if self.causal else []

    def decoder_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        return list(self.inner.decoder_state_shapes(batch, latent_h, latent_w)) if self.causal else []

    # ---- the step form
    def encode_step(self, chunk: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.causal:
            return tuple(self.inner.encode_step(chunk, *past))
        n, t = chunk.shape[:2]
        outs = _pair(self.inner.encode(chunk.reshape(n * t, *chunk.shape[2:])), self.has_logvar, self.where)
        return tuple(o.reshape(n, t, *o.shape[1:]) for o in outs)

    def decode_step(self, z: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.causal:
            return tuple(self.inner.decode_step(z, *past))
        n, t = z.shape[:2]
        frames = self.inner.decode(z.reshape(n * t, *z.shape[2:]))
        return (frames.reshape(n, t, *frames.shape[1:]),)

    def encode_first(self, chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner.encode_first(chunk))

    def decode_first(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner.decode_first(z))

    # ---- whole clips: the first rule, then one step over the rest (or the model's own whole-clip path)
    def check_video(self, video: torch.Tensor, what: str = "video") -> None:
        if not self.first_frames:
            return super().check_video(video, what)
        if torch.jit.is_tracing():
            return
        first, tf = self.first_frames, self.temporal_factor
        if video.dim() == 5 and (video.shape[1] < first or (video.shape[1] - first) % tf):
            raise InputShapeError(f"{self.kind}: {what} length must be {first} + a multiple of {tf} frames, "
                                  f"got {tuple(video.shape)}")
        saved, self.temporal_factor = self.temporal_factor, 1
        try:
            super().check_video(video, what)
        finally:
            self.temporal_factor = saved

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Whole clip (N, T, C, H, W) -> (mean, logvar), or (mean,) for encoders without a logvar."""
        self.check_video(video)
        if not self.first_frames:
            n, _, _, h, w = video.shape
            state = self.init_encoder_state(n, h, w, video.device, video.dtype)
            return self.encode_step(video, *state)[:2 if self.has_logvar else 1]
        outs = 2 if self.has_logvar else 1
        head = self.encode_first(video[:, :self.first_frames])
        if video.shape[1] == self.first_frames:
            return head[:outs]
        tail = self.encode_step(video[:, self.first_frames:], *head[outs:])
        return tuple(torch.cat([a, b], dim=1) for a, b in zip(head[:outs], tail[:outs], strict=True))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.check_latents(z)
        if not self.first_frames:
            return super().decode(z)
        head, *state = self.decode_first(z[:, :1])
        if z.shape[1] == 1:
            return head
        return torch.cat([head, self.decode_step(z[:, 1:], *state)[0]], dim=1)

    def reference_encoder(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The whole-clip reference the streamed encoder graphs are checked against."""
        own = getattr(self.inner, "reference_encode", None)
        if own is None:
            return self.encode(video)
        return _pair(own(video), self.has_logvar, self.where)

    def reference_decoder(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        own = getattr(self.inner, "reference_decode", None)
        return (own(z),) if own is not None else (self.decode(z),)

    def forward(self, video: torch.Tensor):
        raise NotImplementedError(f"{self.kind} models are exported, not trained, by vae-deploy")
