"""Design 1: FrameVAE + a causal temporal Transformer that refines the latent sequence before decoding
(the seed notes' "encode every frame, model the sequence with a Transformer, decode every z", after
VideoGPT, Yan et al. 2021, arXiv:2104.10157).

Layout: video NTCHW float32 in [0, 1]; latents NTChw.

The encoder is the FrameVAE encoder (stateless). The decoder first refines z:

    z' = z + out_proj(Transformer(in_proj(z)))      then frames = FrameDecoder(z') per frame

`in_proj` is a per-frame 3x3 conv (spatial context), then every latent position (h, w) is a token sequence
over time, and each Transformer layer attends causally over a window of W frames: the frame itself and the
W - 1 before it, with a learned bias per (head, distance). `out_proj` starts at zero, so an untrained
Transformer leaves the FrameVAE unchanged (a trained FrameVAE can be refined from there).

Streaming state (decoder only), all zeros initially:
    past_0: valid (N, W-1)              1 where the past slot holds a real frame, 0 before the stream start
    past_1+i: layer i input (N, W-1, d_model, h, w)    the last W-1 inputs of Transformer layer i
Each layer needs its own history because layer i at time t reads layer i-1's outputs at t-W+1..t. The
validity mask keeps the zero initial state out of every attention, and the full-sequence path is the same
step from that state, so chunked and full decoding see exactly the same keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vae_deploy.models.frame import FrameDecoder, FrameEncoder, FrameVAEConfig, per_frame, require_frame_vae
from vae_deploy.models.registry import ModelKind, register_kind
from vae_deploy.models.streaming import VideoVAE


@dataclass
class TemporalVAEConfig:
    frame: FrameVAEConfig = field(default_factory=FrameVAEConfig)  # the per-frame encoder/decoder
    window: int = 8  # W: each latent attends to itself and the W - 1 frames before it (>= 2)
    d_model: int = 64  # token width of the Transformer
    heads: int = 4  # attention heads (d_model must divide by it)
    layers: int = 2  # Transformer layers; the receptive field is layers * (W - 1) past frames
    mlp_ratio: int = 2  # hidden width of each layer's MLP, as a multiple of d_model

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"window must be at least 2, got {self.window}")
        if self.d_model < 1 or self.heads < 1 or self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a positive multiple of heads "
                             f"({self.heads})")
        if self.layers < 1 or self.mlp_ratio < 1:
            raise ValueError("layers and mlp_ratio must be positive")


class TemporalLayer(nn.Module):
    """Pre-norm Transformer layer over time: windowed causal self-attention, then an MLP."""

    def __init__(self, d_model: int, heads: int, window: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)  # a constant, not a traced shape: exports cleanly
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))
        # A learned bias per head and distance 0..W-1 instead of absolute positions: a stream has no
        # absolute time that both the chunked and the full path could agree on.
        self.rel_bias = nn.Parameter(torch.zeros(heads, window))

    def forward(self, x: torch.Tensor, seq: torch.Tensor, allowed: torch.Tensor,
                distance: torch.Tensor) -> torch.Tensor:
        """x (B, T, d): this chunk's tokens; seq (B, S, d): past + x; allowed (B, 1, T, S) bool;
        distance (T, S) long, clamped to 0..W-1."""
        b, t, d, dh = x.shape[0], x.shape[1], x.shape[2], self.head_dim
        q, k, v = self.qkv(self.norm1(seq)).chunk(3, dim=-1)
        q = q[:, -t:]  # queries only for the new frames; keys/values for the whole window

        def heads(a: torch.Tensor) -> torch.Tensor:
            return a.reshape(b, a.shape[1], self.heads, dh).transpose(1, 2)  # (B, heads, len, dh)

        scores = heads(q) @ heads(k).transpose(-1, -2) * self.scale  # (B, heads, T, S)
        scores = scores + self.rel_bias[:, distance]  # (heads, T, S) broadcast over B
        scores = scores.masked_fill(~allowed, float("-inf"))  # the diagonal is always allowed: no empty rows
        attn = torch.softmax(scores, dim=-1) @ heads(v)  # (B, heads, T, dh)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TemporalTransformer(nn.Module):
    """Refines latents z (N, T, C, h, w) -> z' of the same shape, causally in time, with explicit state."""

    def __init__(self, latent_channels: int, c: TemporalVAEConfig):
        super().__init__()
        self.window = c.window
        self.d_model = c.d_model
        self.in_proj = nn.Conv2d(latent_channels, c.d_model, 3, padding=1)
        self.layers = nn.ModuleList(TemporalLayer(c.d_model, c.heads, c.window, c.mlp_ratio)
                                    for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.out_proj = nn.Linear(c.d_model, latent_channels)
        nn.init.zeros_(self.out_proj.weight)  # starts as the identity on z (see the module docstring)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, z: torch.Tensor, valid: torch.Tensor, *hist: torch.Tensor):
        n, t, c, h, w = z.shape[0], z.shape[1], z.shape[2], z.shape[3], z.shape[4]
        d, past_len = self.d_model, self.window - 1

        # Which keys each query may see: within the window (distance 0..W-1) and a real frame.
        ones = torch.ones_like(z[:, :, 0, 0, 0])  # (N, T)
        key_valid = torch.cat([valid, ones], dim=1)  # (N, S), S = W - 1 + T
        present_valid = key_valid[:, -past_len:]
        query = torch.arange(t, device=z.device).unsqueeze(1) + past_len  # position of query t in the window
        key = torch.arange(key_valid.shape[1], device=z.device).unsqueeze(0)
        distance = query - key  # (T, S)
        band = (distance >= 0) & (distance < self.window)
        allowed = band.unsqueeze(0) & (key_valid > 0.5).unsqueeze(1)  # (N, T, S)
        # tokens are (N, h, w) flattened: repeat each stream's mask over its h*w positions
        allowed = allowed.unsqueeze(1).expand(n, h * w, t, key_valid.shape[1]).reshape(n * h * w, 1, t, -1)
        distance = distance.clamp(0, self.window - 1)

        def tokens(a: torch.Tensor) -> torch.Tensor:  # (N, L, d, h, w) -> (N*h*w, L, d)
            return a.permute(0, 3, 4, 1, 2).reshape(n * h * w, a.shape[1], d)

        def untokens(a: torch.Tensor) -> torch.Tensor:  # (N*h*w, L, d) -> (N, L, d, h, w)
            return a.reshape(n, h, w, a.shape[1], a.shape[2]).permute(0, 3, 4, 1, 2)

        x = tokens(per_frame(self.in_proj, z))
        present = [present_valid]
        for layer, past in zip(self.layers, hist, strict=True):
            seq = torch.cat([tokens(past), x], dim=1)
            present.append(untokens(seq[:, -past_len:]).contiguous())
            x = layer(x, seq, allowed, distance)
        delta = self.out_proj(self.norm(x))  # (N*h*w, T, C)
        refined = z + delta.reshape(n, h, w, t, c).permute(0, 3, 4, 1, 2)
        return (refined, *present)


class TemporalVAE(VideoVAE):
    """FrameVAE encoder; causal temporal Transformer + FrameVAE decoder (see the module docstring)."""

    kind = "temporal"

    def __init__(self, config: TemporalVAEConfig | None = None):
        super().__init__()
        self.config = c = config or TemporalVAEConfig()
        self.in_channels = c.frame.in_channels
        self.latent_channels = c.frame.latent_channels
        self.spatial_factor = c.frame.downsample
        self.temporal_factor = 1
        self.encoder = FrameEncoder(c.frame)
        self.temporal = TemporalTransformer(c.frame.latent_channels, c)
        self.decoder = FrameDecoder(c.frame)

    def warm_start_from_other_design(self, source: nn.Module) -> None:
        """Start from a trained FrameVAE of the same config: its encoder and decoder are copied, and the
        Transformer's zero out_proj makes this model then compute exactly what the FrameVAE computes."""
        frame = require_frame_vae(source, self.kind, **dataclasses.asdict(self.config.frame))
        self.encoder.load_state_dict(frame.encoder.state_dict())
        self.decoder.load_state_dict(frame.decoder.state_dict())
        nn.init.zeros_(self.temporal.out_proj.weight)
        nn.init.zeros_(self.temporal.out_proj.bias)

    def encoder_state_shapes(self, batch, height, width) -> list[tuple]:
        return []

    def decoder_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        past = self.config.window - 1
        return [(batch, past)] + [(batch, past, self.config.d_model, latent_h, latent_w)] * self.config.layers

    def encode_step(self, chunk: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_video(chunk, "chunk")
        self.check_state(past, [], "encoder")
        mu, logvar = per_frame(self.encoder, chunk)
        return mu, logvar

    def decode_step(self, z: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_latents(z)
        self.check_state(past, self.decoder_state_shapes(z.shape[0], z.shape[3], z.shape[4]), "decoder")
        refined, *present = self.temporal(z, *past)
        return (per_frame(self.decoder, refined), *present)


register_kind(ModelKind("temporal", TemporalVAEConfig, TemporalVAE, specs="video"))  # the streaming step form
