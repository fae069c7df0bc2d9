"""A tiny causal video VAE with the streaming step form (docs/architecture.md), for testing the streaming
machinery end to end.

Per frame: a stride-2 conv (spatial size halves, as (H - 1)//2 + 1); across time: causal convolutions
that see the last k-1 frames, kept as explicit state. `encode`/`decode` (full sequence) are one step from
the zero state, so chunked streaming must reproduce them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

KIND = "test-causal"


@dataclass
class TinyCausalConfig:
    channels: int = 1  # image channels
    hidden: int = 4  # per-frame feature channels
    latent: int = 2  # latent channels
    kernel_t: int = 3  # encoder temporal kernel: state keeps kernel_t - 1 frames
    kernel_t2: int = 2  # second decoder temporal kernel: a second state tensor


class TinyCausalVAE(nn.Module):
    kind = KIND
    spatial_factor = 2
    temporal_factor = 1

    def __init__(self, config: TinyCausalConfig | None = None):
        super().__init__()
        self.config = c = config or TinyCausalConfig()
        self.in_channels = c.channels
        self.latent_channels = c.latent
        self.down = nn.Conv2d(c.channels, c.hidden, 3, stride=2, padding=1)
        self.enc_t = nn.Conv3d(c.hidden, 2 * c.latent, (c.kernel_t, 1, 1))
        self.dec_t = nn.Conv3d(c.latent, c.hidden, (c.kernel_t, 1, 1))
        self.dec_t2 = nn.Conv3d(c.hidden, c.hidden, (c.kernel_t2, 1, 1))
        self.up = nn.ConvTranspose2d(c.hidden, c.channels, 2, stride=2)

    def encoder_state_shapes(self, batch, height, width):
        c = self.config
        return [(batch, c.kernel_t - 1, c.hidden, (height - 1) // 2 + 1, (width - 1) // 2 + 1)]

    def decoder_state_shapes(self, batch, latent_h, latent_w):
        c = self.config
        return [(batch, c.kernel_t - 1, c.latent, latent_h, latent_w),
                (batch, c.kernel_t2 - 1, c.hidden, latent_h, latent_w)]

    @staticmethod
    def _causal(conv: nn.Conv3d, past: torch.Tensor, x: torch.Tensor):
        """Temporal conv over (past frames + chunk), NTCHW; returns the chunk's outputs and the new past."""
        full = torch.cat([past, x], dim=1)
        present = full[:, -past.shape[1]:]
        y = conv(full.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)
        return y, present

    def encode_step(self, video, past_0):
        n, t = video.shape[0], video.shape[1]
        f = torch.relu(self.down(video.flatten(0, 1)))
        f = f.reshape(n, t, *f.shape[1:])
        y, present_0 = self._causal(self.enc_t, past_0, f)
        mu, logvar = y.chunk(2, dim=2)
        return mu, logvar, present_0

    def decode_step(self, z, past_0, past_1):
        n, t = z.shape[0], z.shape[1]
        h, present_0 = self._causal(self.dec_t, past_0, z)
        h, present_1 = self._causal(self.dec_t2, past_1, torch.relu(h))
        img = torch.sigmoid(self.up(torch.relu(h).flatten(0, 1)))
        return img.reshape(n, t, *img.shape[1:]), present_0, present_1

    def _zeros(self, shapes, ref):
        return [ref.new_zeros(s) for s in shapes]

    def encode(self, video):
        n, _, _, height, width = video.shape
        past = self._zeros(self.encoder_state_shapes(n, height, width), video)
        mu, logvar, _ = self.encode_step(video, *past)
        return mu, logvar

    def decode(self, z):
        n, _, _, lh, lw = z.shape
        return self.decode_step(z, *self._zeros(self.decoder_state_shapes(n, lh, lw), z))[0]
