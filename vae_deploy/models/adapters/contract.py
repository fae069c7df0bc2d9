"""The adapter contract as typed protocols, the one check of it, and the wrapper that turns any module keeping
it into the streaming step form every exporter and runner already handles.

docs/adapters.md is the user's description of the contract (layouts, tables, a worked example); the
protocols below are its checked form. A module is either a `FrameVAEModule` (every frame on its own) or a
`CausalVAEModule` (frames in order, its cache carried as explicit state tensors), the latter with a
`FirstChunkRule` when `first_frames` > 0. `check_contract` refuses a module that keeps neither, in one line
naming what it lacks, and reads its `Traits` once; `AdaptedVAE` wraps it as a `VideoVAE`
(models/streaming.py). This module knows nothing of the diffusers families (models/families.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.models.streaming import VideoVAE

Tensor = torch.Tensor


@runtime_checkable
class VAEModule(Protocol):
    """What every contract module has. Layout at the boundary: images NCHW, video NTCHW, float32 in [0, 1];
    latents in the model's raw latent space."""

    in_channels: int  # image channels (3 for RGB)
    latent_channels: int
    spatial_factor: int  # frame height and width must be multiples of it; latents are H/s x W/s


@runtime_checkable
class FrameVAEModule(VAEModule, Protocol):
    """Every frame on its own, no state; vae-deploy folds a clip's frames into the batch."""

    def encode(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """(N, C, H, W) -> (mean, logvar), each (N, latent_channels, H/s, W/s); the mean alone when
        has_logvar is False."""

    def decode(self, z: Tensor) -> Tensor:
        """(N, latent_channels, h, w) -> images (N, C, h*s, w*s)."""


@runtime_checkable
class CausalVAEModule(VAEModule, Protocol):
    """Frames in order; the cache is explicit state: `past` tensors in, `present` tensors out."""

    temporal_factor: int  # frames per latent frame in the steady state (Wan: 4)

    def encoder_state_shapes(self, batch: Any, height: Any, width: Any) -> list[tuple]:
        """The encoder's state shapes, with only + - * // on the arguments (export passes symbols)."""

    def decoder_state_shapes(self, batch: Any, latent_h: Any, latent_w: Any) -> list[tuple]:
        """The decoder's state shapes, as above."""

    def encode_step(self, video: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        """(N, k*tf, C, H, W) and the past state -> (mean, logvar, *present)."""

    def decode_step(self, z: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        """(N, t, Cl, h, w) and the past state -> (video (N, t*tf, C, H, W), *present)."""


@runtime_checkable
class FirstChunkRule(Protocol):
    """A causal VAE whose first chunk has its own rule (Wan: frame 0 alone). Without it (first_frames 0) a
    stream starts from all-zero past tensors."""

    first_frames: int  # frames the first latent frame covers (Wan: 1, so clips hold 1 + 4k frames)

    def encode_first(self, video: Tensor) -> tuple[Tensor, ...]:
        """(N, first_frames, C, H, W) -> (mean, logvar, *present), present in the steady shapes."""

    def decode_first(self, z: Tensor) -> tuple[Tensor, ...]:
        """(N, 1, Cl, h, w) -> (video (N, first_frames, C, H, W), *present)."""


@dataclass(frozen=True)
class SplitPoint:
    """Where a LatentSplit module's graphs split: the channels of the latent-resolution features between the
    parts, and how many of the state tensors the part that runs first holds (they are the first ones)."""

    encoder_channels: int
    decoder_channels: int
    encoder_pixel_states: int  # the encoder's pixel part runs first
    decoder_latent_states: int  # the decoder's latent part runs first
    encoder_slot: int = 0  # the cache slot each second part starts at (the module's own bookkeeping)
    decoder_slot: int = 0


@runtime_checkable
class LatentSplit(Protocol):
    """Optional, for a causal VAE whose only global op works at latent resolution (Wan's mid-block attention
    over a latent frame): each graph in two parts split at latent resolution, so that the pixel-resolution
    part, local, runs in exact spatial tiles and the latent part on whole latent frames. Features between
    the parts are NTCHW at latent resolution; each part has the first rule's two forms. The encoder's pixel
    part runs first and holds its first `encoder_pixel_states` states (shapes as encoder_state_shapes'); its
    latent part holds the rest, with shapes from `encoder_latent_state_shapes` in latent units. The
    decoder's latent part runs first and holds its first `decoder_latent_states` states."""

    split_point: SplitPoint

    def encoder_latent_state_shapes(self, batch: Any, latent_h: Any, latent_w: Any) -> list[tuple]: ...
    def encode_pixels_first(self, video: Tensor) -> tuple[Tensor, ...]: ...
    def encode_pixels_step(self, video: Tensor, *past: Tensor) -> tuple[Tensor, ...]: ...
    def encode_latents_first(self, features: Tensor) -> tuple[Tensor, ...]: ...
    def encode_latents_step(self, features: Tensor, *past: Tensor) -> tuple[Tensor, ...]: ...
    def decode_latents_first(self, z: Tensor) -> tuple[Tensor, ...]: ...
    def decode_latents_step(self, z: Tensor, *past: Tensor) -> tuple[Tensor, ...]: ...
    def decode_pixels_first(self, features: Tensor) -> tuple[Tensor, ...]: ...
    def decode_pixels_step(self, features: Tensor, *past: Tensor) -> tuple[Tensor, ...]: ...


class ReferenceHooks(Protocol):
    """Optional, either kind: the model's own whole-clip computation (diffusers' `vae.encode(x)`), the
    reference the streamed graphs are checked against. The same names on the module and on AdaptedVAE."""

    def reference_encode(self, video: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """(N, T, C, H, W) -> mean or (mean, logvar)."""

    def reference_decode(self, z: Tensor) -> Tensor:
        """(N, t, Cl, h, w) -> video."""


def members(protocol: type) -> tuple[str, ...]:
    """A protocol's attributes and methods, its bases' first, in the order they are written."""
    names: list[str] = []
    for base in reversed(protocol.__mro__):
        if base is Protocol or not getattr(base, "_is_protocol", False):
            continue
        for name in (*base.__dict__.get("__annotations__", {}), *vars(base)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return tuple(names)


# The methods of LatentSplit, which AdaptedVAE hands to the module it wraps (export traces them by name).
SPLIT_METHODS = frozenset(members(LatentSplit)) - {"split_point"}


@dataclass(frozen=True)
class Traits:
    """What export and the runtime need to know of a contract module, read once by `check_contract`."""

    causal: bool  # a CausalVAEModule (else a FrameVAEModule)
    in_channels: int
    latent_channels: int
    spatial_factor: int
    temporal_factor: int = 1  # 1 for a frame VAE
    first_frames: int = 0  # > 0: the FirstChunkRule applies
    has_logvar: bool = True  # False: the encoder gives the mean only, and the tuples hold no logvar
    output_clamped: bool = False  # decoded frames clamped to [0, 1], so a value outside is a fault
    # {"scale": s, "shift": m}, each a number or one per latent channel: the diffusion model's space is
    # (z - m) * s (runtime/latent_space.py); None when the model has none
    latent_normalization: dict | None = field(default=None, hash=False)
    split: SplitPoint | None = None  # a LatentSplit module's split point (its graphs also come in parts)


def _int(module: Any, name: str, where: str, least: int, default: int | None = None) -> int:
    value = getattr(module, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where}: {name} must be an integer >= {least}, got {value!r}")
    return value


def _lacks(module: Any, protocol: type) -> list[str]:
    """The members of `protocol` that `module` lacks (a method must be callable)."""
    attributes = set().union(*(b.__dict__.get("__annotations__", {}) for b in protocol.__mro__))
    return [name for name in members(protocol)
            if getattr(module, name, None) is None or (name not in attributes
                                                       and not callable(getattr(module, name)))]


def check_contract(module: Any, where: str) -> Traits:
    """The module's Traits; a module that keeps neither protocol is refused in one line naming what it
    lacks. Any causal member makes it a causal VAE (the frame methods alone would be a frame VAE)."""
    causal = any(hasattr(module, name) for name in ("encode_step", "decode_step", "encoder_state_shapes",
                                                    "decoder_state_shapes"))
    protocol, what = (CausalVAEModule, "a causal video VAE") if causal else (FrameVAEModule, "a frame VAE")
    missing = _lacks(module, protocol)
    first = _int(module, "first_frames", where, least=0, default=0) if causal and not missing else 0
    if first:
        missing += _lacks(module, FirstChunkRule)
        what += f" with first_frames {first}"
    if missing:
        raise ConfigError(f"{where} is {what} without {', '.join(missing)} (see the adapter contract in "
                          f"docs/adapters.md)")
    split = getattr(module, "split_point", None) if causal else None
    if split is not None:
        if not isinstance(split, SplitPoint):
            raise ConfigError(f"{where}: split_point must be a SplitPoint, got {split!r}")
        missing += _lacks(module, LatentSplit)
        what += " split at latent resolution"
    norm = getattr(module, "latent_normalization", None)
    if norm is not None and (not isinstance(norm, dict) or set(norm) - {"scale", "shift"}):
        raise ConfigError(f"{where}: latent_normalization must be a dict with 'scale' and/or 'shift', "
                          f"got {norm!r}")
    return Traits(
        causal=causal, in_channels=_int(module, "in_channels", where, 1),
        latent_channels=_int(module, "latent_channels", where, 1),
        spatial_factor=_int(module, "spatial_factor", where, 1),
        temporal_factor=_int(module, "temporal_factor", where, 1) if causal else 1, first_frames=first,
        has_logvar=bool(getattr(module, "has_logvar", True)),
        output_clamped=bool(getattr(module, "output_clamped", False)), latent_normalization=norm,
        split=split)


@dataclass
class AdapterConfig:
    class_name: str = ""  # a diffusers class (config.json's _class_name); "" for an entry point
    entry_point: str = ""  # "package.module:factory" returning a module that keeps the contract
    config: dict = field(default_factory=dict)  # the diffusers config (config.json without "_" keys)

    def __post_init__(self):
        if bool(self.class_name) == bool(self.entry_point):
            raise ValueError("an adapter config names either a diffusers class_name or an entry_point")


def _pair(out: Any, has_logvar: bool, where: str) -> tuple[Tensor, ...]:
    """An encoder's result as (mean, logvar) or (mean,)."""
    out = (out,) if isinstance(out, Tensor) else tuple(out)
    if has_logvar and len(out) < 2:
        # Else the graph would name two outputs of one, and the exporter fail without saying why.
        raise ConfigError(f"{where}: encode gave a mean only; a module whose encoder has no logvar sets "
                          f"has_logvar = False (see the adapter contract in docs/adapters.md)")
    return out[:2] if has_logvar else out[:1]


class AdaptedVAE(VideoVAE):
    """A contract module as a VideoVAE: a frame VAE becomes a stateless video model (frames folded into the
    batch), a causal one keeps its steps.

    `config` says how to build `inner` again without weights (a diffusers class from its config, or the
    entry point; models/adapters/__init__.py does that), so the PyTorch reference of a model folder loads like
    any checkpoint: the state_dict is the wrapped module's under `inner.`. `kind` is the registry name."""

    def __init__(self, config: AdapterConfig, inner: nn.Module, kind: str):
        super().__init__()
        self.config, self.kind, self.inner = config, kind, inner
        self.where = f"--from {config.entry_point}" if config.entry_point else config.class_name
        self.traits = t = check_contract(inner, self.where)
        # The attributes VideoVAE, the specs (export/specs.py) and the runtime read, from the one record.
        self.in_channels, self.latent_channels = t.in_channels, t.latent_channels
        self.spatial_factor, self.temporal_factor = t.spatial_factor, t.temporal_factor
        self.first_frames, self.has_logvar = t.first_frames, t.has_logvar
        self.output_clamped, self.latent_normalization = t.output_clamped, t.latent_normalization
        self.split_point = t.split

    def narrow(self) -> AdaptedVAE | None:
        """The wrapped module's copy at its narrowest widths (its `narrow()`: the same receptive fields, a
        fraction of the memory to measure them in), wrapped the same way; None for a module without one."""
        narrow = getattr(self.inner, "narrow", None)
        return AdaptedVAE(self.config, narrow(), self.kind) if callable(narrow) else None

    def __getattr__(self, name: str):
        # A LatentSplit module's parts are traced by name (export/specs.py): they are the module's own.
        if name in SPLIT_METHODS and self.split_point is not None:
            return getattr(self.inner, name)
        return super().__getattr__(name)

    # ---- state shapes (none for frame VAEs)
    def encoder_state_shapes(self, batch, height, width) -> list[tuple]:
        return list(self.inner.encoder_state_shapes(batch, height, width)) if self.traits.causal else []

    def decoder_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        return list(self.inner.decoder_state_shapes(batch, latent_h, latent_w)) if self.traits.causal else []

    # ---- the step form
    def encode_step(self, chunk: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        if self.traits.causal:
            return tuple(self.inner.encode_step(chunk, *past))
        n, t = chunk.shape[:2]
        outs = _pair(self.inner.encode(chunk.reshape(n * t, *chunk.shape[2:])), self.has_logvar, self.where)
        return tuple(o.reshape(n, t, *o.shape[1:]) for o in outs)

    def decode_step(self, z: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        if self.traits.causal:
            return tuple(self.inner.decode_step(z, *past))
        n, t = z.shape[:2]
        frames = self.inner.decode(z.reshape(n * t, *z.shape[2:]))
        return (frames.reshape(n, t, *frames.shape[1:]),)

    def encode_first(self, chunk: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.inner.encode_first(chunk))

    def decode_first(self, z: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.inner.decode_first(z))

    # ---- whole clips: the first rule, then one step over the rest (or the model's own whole-clip path)
    def check_video(self, video: Tensor, what: str = "video") -> None:
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

    def encode(self, video: Tensor) -> tuple[Tensor, ...]:
        """Whole clip (N, T, C, H, W) -> (mean, logvar), or (mean,) for encoders without a logvar."""
        self.check_video(video)
        outs = 2 if self.has_logvar else 1
        if not self.first_frames:
            n, _, _, h, w = video.shape
            state = self.init_encoder_state(n, h, w, video.device, video.dtype)
            return self.encode_step(video, *state)[:outs]
        head = self.encode_first(video[:, :self.first_frames])
        if video.shape[1] == self.first_frames:
            return head[:outs]
        tail = self.encode_step(video[:, self.first_frames:], *head[outs:])
        return tuple(torch.cat([a, b], dim=1) for a, b in zip(head[:outs], tail[:outs], strict=True))

    def decode(self, z: Tensor) -> Tensor:
        self.check_latents(z)
        if not self.first_frames:
            return super().decode(z)
        head, *state = self.decode_first(z[:, :1])
        if z.shape[1] == 1:
            return head
        return torch.cat([head, self.decode_step(z[:, 1:], *state)[0]], dim=1)

    # ---- the parity reference (ReferenceHooks): the module's own, else the whole-clip paths above
    def reference_encode(self, video: Tensor) -> tuple[Tensor, ...]:
        own = getattr(self.inner, "reference_encode", None)
        return self.encode(video) if own is None else _pair(own(video), self.has_logvar, self.where)

    def reference_decode(self, z: Tensor) -> tuple[Tensor, ...]:
        own = getattr(self.inner, "reference_decode", None)
        return (own(z),) if own is not None else (self.decode(z),)

    def forward(self, video: Tensor):
        raise NotImplementedError(f"{self.kind} models are exported, not trained, by vae-deploy")


__all__ = ["AdaptedVAE", "AdapterConfig", "CausalVAEModule", "FirstChunkRule", "FrameVAEModule",
           "LatentSplit", "ReferenceHooks", "SPLIT_METHODS", "SplitPoint", "Traits", "VAEModule",
           "check_contract", "members"]
