"""FrameVAE: a small 2D conv VAE applied to every frame on its own (no temporal context, no state).

Layout: video NTCHW float32 in [0, 1]; latents (mu, logvar) NTChw with h = H / downsample.

Built for edge decoding in the spirit of TAESD (Bohan Ollin Boer, madebyollin/taesd): 3x3 convs, ReLU,
nearest-neighbour upsampling, residual blocks, no normalization (normalization statistics would couple
frames and batch items). Two choices keep the decoder fast on a CPU: no conv runs at full resolution (the
encoder starts with a 2x2 space-to-depth, the decoder ends with depth-to-space, as in ESPCN, Shi et al.
2016), and the widest layers sit at the coarse levels. Convolutions run in channels-last memory format in
eager mode, which oneDNN executes about twice as fast on x86 (a no-op in exported graphs;
`eager_channels_last(False)` switches it off for comparisons).

Compression: raw uint8 RGB bytes over fp16 latent bytes is 3 * downsample^2 / (2 * latent_channels), so
downsample 8 with latent_channels 4 gives 24.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vae_deploy.errors import ConfigError
from vae_deploy.models.registry import ModelKind, register_kind
from vae_deploy.models.streaming import VideoVAE

# Activation by name (configs are plain data); all are elementwise, so streaming is unaffected.
ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "silu": lambda: nn.SiLU(inplace=True)}
SPATIAL_FACTORS = (4, 8, 16)


def check_common(config) -> None:
    """Checks shared by the conv VAE configs (raised as ValueError; from_dict turns them into ConfigError)."""
    if config.downsample not in SPATIAL_FACTORS:
        raise ValueError(f"downsample must be one of {SPATIAL_FACTORS}, got {config.downsample}")
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                         f"got {config.activation!r}")
    minimum = {"in_channels": 1, "latent_channels": 1, "channels": 1, "fine_channels": 1,
               "blocks_per_level": 0}
    for name, least in minimum.items():
        if getattr(config, name) < least:
            raise ValueError(f"{name} must be at least {least}, got {getattr(config, name)}")


def level_widths(downsample: int, channels: int, fine_channels: int) -> list[int]:
    """Channel width of each resolution level, finest (1/2) to coarsest (1/downsample)."""
    levels = int(math.log2(downsample))
    return [fine_channels] + [channels] * (levels - 1)


@dataclass
class FrameVAEConfig:
    in_channels: int = 3  # RGB
    latent_channels: int = 4  # 4 at downsample 8 is a compression ratio of 24 (uint8 RGB vs fp16 latents)
    downsample: int = 8  # spatial factor: 4, 8 or 16
    channels: int = 64  # width of the coarse levels (1/4 .. 1/downsample), where most of the capacity sits
    fine_channels: int = 48  # width at 1/2 resolution, the costliest level, so kept narrower
    blocks_per_level: int = 1  # residual blocks (two 3x3 convs each) per level in encoder and decoder
    activation: str = "relu"  # "relu" or "silu"

    def __post_init__(self):
        check_common(self)


class ResBlock2d(nn.Module):
    """x -> act(x + conv(act(conv(x)))): two 3x3 convs with an identity skip."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))


_eager_channels_last = True  # see eager_channels_last()


@contextlib.contextmanager
def eager_channels_last(enabled: bool) -> Iterator[None]:
    """Inside the block, eager FrameEncoder/FrameDecoder convs run channels-last (True, the default) or in
    plain NCHW (False), the layout most eager conv models use: for benchmarks that compare against that
    baseline. Exported graphs are the same either way (tracing ignores memory formats). The setting is
    process-wide, not per thread or per model."""
    global _eager_channels_last
    previous, _eager_channels_last = _eager_channels_last, enabled
    try:
        yield
    finally:
        _eager_channels_last = previous


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # Speed only: oneDNN convs are faster in NHWC on CPU; tracing (export) ignores memory formats.
    if not _eager_channels_last or torch.jit.is_tracing():
        return x
    return x.contiguous(memory_format=torch.channels_last)


class FrameEncoder(nn.Module):
    """Images (B, C, H, W) -> (mu, logvar), each (B, latent, H / downsample, W / downsample)."""

    def __init__(self, c: FrameVAEConfig):
        super().__init__()
        widths = level_widths(c.downsample, c.channels, c.fine_channels)
        act = ACTIVATIONS[c.activation]
        layers: list[nn.Module] = [nn.PixelUnshuffle(2),  # no conv at full resolution
                                   nn.Conv2d(4 * c.in_channels, widths[0], 3, padding=1), act()]
        for i, width in enumerate(widths):
            if i:
                layers += [nn.Conv2d(widths[i - 1], width, 3, stride=2, padding=1), act()]
            layers += [ResBlock2d(width, c.activation) for _ in range(c.blocks_per_level)]
        layers.append(nn.Conv2d(widths[-1], 2 * c.latent_channels, 3, padding=1))  # mean and log-variance
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(_channels_last(x)).chunk(2, dim=1)


class FrameDecoder(nn.Module):
    """Latents (B, latent, h, w) -> images (B, C, h * downsample, w * downsample) in [0, 1]."""

    def __init__(self, c: FrameVAEConfig):
        super().__init__()
        widths = level_widths(c.downsample, c.channels, c.fine_channels)[::-1]  # coarsest first
        act = ACTIVATIONS[c.activation]
        layers: list[nn.Module] = [nn.Conv2d(c.latent_channels, widths[0], 3, padding=1), act()]
        for i, width in enumerate(widths):
            if i:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(widths[i - 1], width, 3, padding=1), act()]
            layers += [ResBlock2d(width, c.activation) for _ in range(c.blocks_per_level)]
        layers += [nn.Conv2d(widths[-1], 4 * c.in_channels, 3, padding=1), nn.PixelShuffle(2), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(_channels_last(z))


def require_frame_vae(source: nn.Module, target_kind: str, **expected) -> FrameVAE:
    """Check that a warm-start source is a FrameVAE whose config has the `expected` field values."""
    if getattr(source, "kind", None) != "frame":
        raise ConfigError(f"a {target_kind!r} model starts from a 'frame' model, not from a "
                          f"{getattr(source, 'kind', '?')!r} one")
    found = dataclasses.asdict(source.config)
    wrong = [f"{k} {found[k]!r} (needs {v!r})" for k, v in expected.items() if found[k] != v]
    if wrong:
        raise ConfigError(f"the 'frame' model to start from does not match this {target_kind!r} model: "
                          + ", ".join(wrong))
    return source


def per_frame(fn, x: torch.Tensor):
    """Apply an image function (B, C, H, W) -> tensor(s) to every frame of x (N, T, C, H, W)."""
    n, t = x.shape[0], x.shape[1]
    out = fn(x.reshape(n * t, *x.shape[2:]))
    if isinstance(out, tuple):
        return tuple(o.reshape(n, t, *o.shape[1:]) for o in out)
    return out.reshape(n, t, *out.shape[1:])


class FrameVAE(VideoVAE):
    """Per-frame conv VAE; stateless, so its state lists are empty and any chunk size is exact."""

    kind = "frame"

    def __init__(self, config: FrameVAEConfig | None = None):
        super().__init__()
        self.config = c = config or FrameVAEConfig()
        self.in_channels = c.in_channels
        self.latent_channels = c.latent_channels
        self.spatial_factor = c.downsample
        self.temporal_factor = 1
        self.encoder = FrameEncoder(c)
        self.decoder = FrameDecoder(c)

    def encoder_state_shapes(self, batch, height, width) -> list[tuple]:
        return []

    def decoder_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        return []

    def encode_step(self, chunk: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_video(chunk, "chunk")
        self.check_state(past, [], "encoder")
        mu, logvar = per_frame(self.encoder, chunk)
        return mu, logvar

    def decode_step(self, z: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_latents(z)
        self.check_state(past, [], "decoder")
        return (per_frame(self.decoder, z),)


register_kind(ModelKind("frame", FrameVAEConfig, FrameVAE, specs="video"))  # the streaming step form
