"""Design 2: a causal 3D-conv VAE (the seed notes' "or process the video directly with a 3D encoder and
decoder"), causal in time so that it can stream.

Layout: video NTCHW float32 in [0, 1]; latents NTChw with t = T / temporal_downsample, h = H / downsample.
Inside, the 3D convs work on NCTHW.

Causality: every temporal convolution pads only the past side. A `CausalConv3d` with temporal kernel k and
temporal stride s keeps the last k - s input frames of the previous chunk as its state and prepends them
(zeros before the stream starts, which is exactly the zero padding the full-sequence pass uses), so output i
depends on input frames up to the end of group i and never on later ones.

Temporal downsampling (x1, x2, x4) is one or two stride-2 causal convs at the coarsest level of the
encoder; the decoder mirrors it with "time-up" layers that map each latent frame to 2 frames (a conv that
doubles the channels, then depth-to-time). Latent frame i thus covers input frames [f*i, f*i + f), f =
temporal_factor, and decodes to exactly those frames.

Chunking rule and the streaming wrapper: `encode_step` needs a whole number of temporal groups (chunk
length a multiple of f), because a stride-f conv can only be resumed at a group boundary; then the chunked
result equals the full-sequence one exactly. `decode_step` takes any number of latent frames. For sources
that deliver frames one by one, `vae_deploy.models.streaming.StreamEncoder` buffers the frames that do not
fill a group yet and encodes them once the group is complete; at the end of the stream `flush()` pads the
last partial group by repeating its last frame, encodes it and records how many frames it added
(`padded`), so the stream equals `encode(pad_time(video, f))` and the caller drops the last `padded`
decoded frames.

State: one tensor per causal conv whose context (k - s) is non-zero, in module order, each
(N, C_in, k - s, H_conv, W_conv) at that conv's input resolution; zeros initially.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vae_deploy.errors import ConfigError
from vae_deploy.models.frame import (
    ACTIVATIONS,
    FrameVAEConfig,
    check_common,
    level_widths,
    require_frame_vae,
)
from vae_deploy.models.registry import ModelKind, register_kind
from vae_deploy.models.streaming import VideoVAE

TEMPORAL_FACTORS = (1, 2, 4)


@dataclass
class Causal3DVAEConfig:
    in_channels: int = 3  # RGB
    latent_channels: int = 4  # compression = 3 * downsample^2 * temporal_downsample / (2 * latent_channels)
    downsample: int = 8  # spatial factor: 4, 8 or 16
    temporal_downsample: int = 1  # frames per latent frame: 1, 2 or 4
    kernel_t: int = 3  # temporal kernel of the causal convs (>= 2): each sees kernel_t - 1 past frames
    channels: int = 48  # width of the coarse levels; 3D convs cost kernel_t times a 2D conv, so narrower
    fine_channels: int = 32  # width at 1/2 resolution
    blocks_per_level: int = 1  # residual blocks (two causal convs each) per level
    activation: str = "relu"  # "relu" or "silu"

    def __post_init__(self):
        check_common(self)
        if self.temporal_downsample not in TEMPORAL_FACTORS:
            raise ValueError(f"temporal_downsample must be one of {TEMPORAL_FACTORS}, "
                             f"got {self.temporal_downsample}")
        if self.kernel_t < 2:
            raise ValueError(f"kernel_t must be at least 2 (the stride-2 temporal convs need it), "
                             f"got {self.kernel_t}")


class Stateful(nn.Module):
    """A layer with streaming state: forward(x, past: iterator, present: list) consumes its past tensors
    in order and appends its present ones in the same order."""

    def state_shapes(self, batch, height, width) -> list[tuple]:
        raise NotImplementedError


class CausalConv3d(Stateful):
    """Conv3d (kernel_t, 3, 3) that pads time on the past side only, with the previous chunk's frames.

    `scale` = (mul, div): this conv's input height/width is the graph input's * mul // div, which is
    what its state shape needs.
    """

    def __init__(self, cin: int, cout: int, kernel_t: int, scale: tuple[int, int], stride_t: int = 1,
                 stride_s: int = 1, kernel_s: int = 3):
        super().__init__()
        pad = kernel_s // 2  # spatial 'same' padding; time is padded by the state instead
        self.conv = nn.Conv3d(cin, cout, (kernel_t, kernel_s, kernel_s),
                              stride=(stride_t, stride_s, stride_s), padding=(0, pad, pad))
        self.cin = cin
        self.context = kernel_t - stride_t  # past frames that the next chunk needs
        self.scale = scale

    def state_shapes(self, batch, height, width) -> list[tuple]:
        if not self.context:
            return []
        mul, div = self.scale
        return [(batch, self.cin, self.context, height * mul // div, width * mul // div)]

    def forward(self, x: torch.Tensor, past, present: list) -> torch.Tensor:
        if self.context:
            x = torch.cat([next(past), x], dim=2)
            present.append(x[:, :, -self.context:])
        return self.conv(x)


class ResBlock3d(Stateful):
    """x -> act(x + conv(act(conv(x)))) with causal 3D convs."""

    def __init__(self, width: int, kernel_t: int, scale: tuple[int, int], activation: str):
        super().__init__()
        self.conv1 = CausalConv3d(width, width, kernel_t, scale)
        self.conv2 = CausalConv3d(width, width, kernel_t, scale)
        self.act = ACTIVATIONS[activation]()

    def state_shapes(self, batch, height, width) -> list[tuple]:
        return self.conv1.state_shapes(batch, height, width) + self.conv2.state_shapes(batch, height, width)

    def forward(self, x, past, present):
        h = self.act(self.conv1(x, past, present))
        return self.act(x + self.conv2(h, past, present))


class TimeUp(Stateful):
    """Each input frame -> 2 output frames: a causal conv to 2x channels, then depth-to-time."""

    def __init__(self, width: int, kernel_t: int, scale: tuple[int, int]):
        super().__init__()
        self.conv = CausalConv3d(width, 2 * width, kernel_t, scale)

    def state_shapes(self, batch, height, width) -> list[tuple]:
        return self.conv.state_shapes(batch, height, width)

    def forward(self, x, past, present):
        y = self.conv(x, past, present)  # (N, 2C, T, H, W)
        n, c2, t, h, w = y.shape[0], y.shape[1], y.shape[2], y.shape[3], y.shape[4]
        y = y.reshape(n, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5)  # (N, C, T, 2, H, W)
        return y.reshape(n, c2 // 2, t * 2, h, w)  # frame 2t + j comes from channel group j of frame t


class CausalSequential(nn.ModuleList):
    """Runs layers in order, threading the state through the stateful ones."""

    def state_shapes(self, batch, height, width) -> list[tuple]:
        return [s for m in self if isinstance(m, Stateful) for s in m.state_shapes(batch, height, width)]

    def forward(self, x, past, present):
        for m in self:
            x = m(x, past, present) if isinstance(m, Stateful) else m(x)
        return x


def inflate_convs(convs_2d: list[nn.Conv2d], convs_3d: list[nn.Conv3d]) -> None:
    """Copy 2D conv weights into causal 3D convs at the last temporal tap (the current frame) and zero the
    taps on past frames ("inflation", as I3D, Carreira & Zisserman 2017, turned 2D nets into 3D ones, here
    onto the causal tap): each 3D conv then computes exactly its 2D conv on every frame."""
    if len(convs_2d) != len(convs_3d):
        raise ConfigError(f"cannot inflate {len(convs_2d)} 2D convs into {len(convs_3d)} 3D convs")
    with torch.no_grad():
        for conv2, conv3 in zip(convs_2d, convs_3d, strict=True):
            if conv3.weight[:, :, -1].shape != conv2.weight.shape or conv3.stride[1:] != conv2.stride:
                raise ConfigError(f"cannot inflate a 2D conv {tuple(conv2.weight.shape)} into a 3D conv "
                                  f"{tuple(conv3.weight.shape)}")
            conv3.weight.zero_()
            conv3.weight[:, :, -1].copy_(conv2.weight)
            conv3.bias.copy_(conv2.bias)


def _to_ncthw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 1, 3, 4)


class Causal3DEncoder(nn.Module):
    def __init__(self, c: Causal3DVAEConfig):
        super().__init__()
        widths = level_widths(c.downsample, c.channels, c.fine_channels)
        act, kt = ACTIVATIONS[c.activation], c.kernel_t
        # scale (1, div): state shapes are relative to the encoder input; level i is at 1 / 2^(i+1)
        layers: list[nn.Module] = [CausalConv3d(4 * c.in_channels, widths[0], kt, (1, 2)), act()]
        for i, width in enumerate(widths):
            div = 2 ** (i + 1)
            if i:
                layers += [CausalConv3d(widths[i - 1], width, kt, (1, div // 2), stride_s=2), act()]
            layers += [ResBlock3d(width, kt, (1, div), c.activation) for _ in range(c.blocks_per_level)]
        for _ in range(c.temporal_downsample.bit_length() - 1):  # x2 -> 1 stage, x4 -> 2 stages
            layers += [CausalConv3d(widths[-1], widths[-1], kt, (1, c.downsample), stride_t=2), act()]
        layers.append(CausalConv3d(widths[-1], 2 * c.latent_channels, kt, (1, c.downsample)))
        self.layers = CausalSequential(layers)

    def forward(self, video: torch.Tensor, past, present) -> torch.Tensor:
        n, t = video.shape[0], video.shape[1]
        x = F.pixel_unshuffle(video.reshape(n * t, *video.shape[2:]), 2)  # no conv at full resolution
        x = _to_ncthw(x.reshape(n, t, *x.shape[1:]))
        return _to_ncthw(self.layers(x, past, present))  # (N, t, 2 * latent, h, w)


class Causal3DDecoder(nn.Module):
    def __init__(self, c: Causal3DVAEConfig):
        super().__init__()
        widths = level_widths(c.downsample, c.channels, c.fine_channels)[::-1]  # coarsest first
        act, kt = ACTIVATIONS[c.activation], c.kernel_t
        # scale (mul, 1): state shapes are relative to the latent size; level j is at 2^j times it
        layers: list[nn.Module] = [CausalConv3d(c.latent_channels, widths[0], kt, (1, 1)), act()]
        for _ in range(c.temporal_downsample.bit_length() - 1):
            layers += [TimeUp(widths[0], kt, (1, 1)), act()]
        for j, width in enumerate(widths):
            if j:
                layers += [nn.Upsample(scale_factor=(1, 2, 2), mode="nearest"),
                           CausalConv3d(widths[j - 1], width, kt, (2 ** j, 1)), act()]
            layers += [ResBlock3d(width, kt, (2 ** j, 1), c.activation) for _ in range(c.blocks_per_level)]
        layers.append(CausalConv3d(widths[-1], 4 * c.in_channels, kt, (c.downsample // 2, 1)))
        self.layers = CausalSequential(layers)

    def forward(self, z: torch.Tensor, past, present) -> torch.Tensor:
        y = _to_ncthw(self.layers(_to_ncthw(z), past, present))  # (N, T, 4C, H/2, W/2)
        n, t = y.shape[0], y.shape[1]
        frames = torch.sigmoid(F.pixel_shuffle(y.reshape(n * t, *y.shape[2:]), 2))
        return frames.reshape(n, t, *frames.shape[1:])


class Causal3DVAE(VideoVAE):
    """Causal 3D-conv encoder and decoder with optional temporal downsampling (see the module docstring)."""

    kind = "causal3d"

    def __init__(self, config: Causal3DVAEConfig | None = None):
        super().__init__()
        self.config = c = config or Causal3DVAEConfig()
        self.in_channels = c.in_channels
        self.latent_channels = c.latent_channels
        self.spatial_factor = c.downsample
        self.temporal_factor = c.temporal_downsample
        self.encoder = Causal3DEncoder(c)
        self.decoder = Causal3DDecoder(c)

    def warm_start_from_other_design(self, source: nn.Module) -> None:
        """Start from a trained FrameVAE with the same widths and no temporal downsampling: every conv is
        inflated from its 2D twin (same order in both designs), so this model starts out computing exactly
        what the FrameVAE computes, frame by frame, and training then learns to use the past frames."""
        c = self.config
        if c.temporal_downsample != 1:
            raise ConfigError("a causal3d model with temporal downsampling has no FrameVAE twin to start "
                              "from")
        # every FrameVAE config field has a twin of the same name here, and all must agree
        frame = require_frame_vae(source, self.kind, **{f.name: getattr(c, f.name)
                                                        for f in dataclasses.fields(FrameVAEConfig)})
        for part_2d, part_3d in ((frame.encoder, self.encoder), (frame.decoder, self.decoder)):
            inflate_convs([m for m in part_2d.modules() if isinstance(m, nn.Conv2d)],
                          [m for m in part_3d.modules() if isinstance(m, nn.Conv3d)])

    def encoder_state_shapes(self, batch, height, width) -> list[tuple]:
        return self.encoder.layers.state_shapes(batch, height, width)

    def decoder_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        return self.decoder.layers.state_shapes(batch, latent_h, latent_w)

    def encode_step(self, chunk: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_video(chunk, "chunk")
        self.check_state(past, self.encoder_state_shapes(chunk.shape[0], chunk.shape[3], chunk.shape[4]),
                         "encoder")
        present: list[torch.Tensor] = []
        h = self.encoder(chunk, iter(past), present)
        mu, logvar = h.chunk(2, dim=2)
        return (mu, logvar, *present)

    def decode_step(self, z: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_latents(z)
        self.check_state(past, self.decoder_state_shapes(z.shape[0], z.shape[3], z.shape[4]), "decoder")
        present: list[torch.Tensor] = []
        frames = self.decoder(z, iter(past), present)
        return (frames, *present)


register_kind(ModelKind("causal3d", Causal3DVAEConfig, Causal3DVAE, specs="video"))  # the streaming step form
