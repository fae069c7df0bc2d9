"""diffusers' AutoencoderKLWan (Wan 2.1 and Wan 2.2 video VAEs) as a causal video VAE of the adapter contract.

diffusers streams a Wan clip itself: the encoder sees frame 0 alone, then groups of 4 frames; the decoder
sees one latent frame at a time, the first under its own rule (`first_chunk`, 1 frame out), then 4 frames
per latent frame. Between calls every causal convolution keeps the last frames of its input in a Python
list (`feat_cache`, one slot per `WanCausalConv3d`, filled in call order through `feat_idx`). This module
runs diffusers' own encoder and decoder modules on that list, built from the `past` tensors, and reads it
back as `present` tensors of fixed shapes (causal_cache.py, which the next causal family can use as well):
causal-conv slots hold the last 2 frames of their input, the stride-2 time convs of `downsample3d` the
last frame; after the first chunk a slot may hold the marker "Rep" (`upsample3d`, which skips its time conv
on the first latent frame), which the next chunk treats as zero frames, as diffusers does. Which slots are
used, and their shapes, come from one small probe run in `wrap()`.

For exact spatial tiling each graph also comes in two parts split at latent resolution (the contract's
`LatentSplit`): Wan's only global op is the mid block's attention over a latent frame, so the encoder's
pixel part (conv_in, down blocks) and the decoder's pixel part (up blocks, head) are local and tile, while
the latent parts (encoder: mid block and head; decoder: conv_in and mid block) run on whole latent frames.
The parts call diffusers' own blocks in the order its `forward` does, on the same cache list; the state
tensors of the part that runs first are the first ones, because the cache fills in call order.
"""

from __future__ import annotations

import torch
from torch import nn

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.models.adapters.causal_cache import CacheState, filled
from vae_deploy.models.adapters.contract import SplitPoint

NARROW_WIDTH = 8  # base widths of the copy receptive fields are measured on (`narrow`)
FIRST_FRAMES = 1  # diffusers encodes frame 0 alone and decodes the first latent frame to 1 frame
STEP_FRAMES = 4  # frames per encoder call after the first in diffusers' own encode (`iter_`)


def _diffusers_wan():
    # the diffusers extra: only a caller that holds an AutoencoderKLWan gets here
    from diffusers.models.autoencoders import autoencoder_kl_wan

    return autoencoder_kl_wan


class WanVAE(nn.Module):
    """An AutoencoderKLWan keeping the causal video VAE contract (contract.py); `vae` is diffusers' model."""

    has_logvar = True
    output_clamped = True  # diffusers clamps decoded frames to [-1, 1], so [0, 1] here

    def __init__(self, vae: nn.Module):
        super().__init__()
        cfg = vae.config
        self.vae = vae
        self.patch_size = cfg.patch_size or 1
        if cfg.out_channels != cfg.in_channels or cfg.in_channels % self.patch_size ** 2:
            raise ConfigError(f"AutoencoderKLWan config: in_channels {cfg.in_channels} and out_channels "
                              f"{cfg.out_channels} must be equal and hold whole {self.patch_size}x"
                              f"{self.patch_size} patches")
        # the model sees patchified frames (Wan 2.2: 3 x 2 x 2 = 12 channels); the contract sees the images
        self.in_channels = int(cfg.in_channels) // self.patch_size ** 2
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1) * self.patch_size
        self.temporal_factor = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
        self.first_frames = FIRST_FRAMES
        if self.temporal_factor != STEP_FRAMES:
            # diffusers' encode walks 1 + 4k frames whatever the config; another temporal factor would make
            # its own whole-clip result (the reference) disagree with any stream
            raise ConfigError(f"AutoencoderKLWan with temperal_downsample {list(cfg.temperal_downsample)} "
                              f"compresses time by {self.temporal_factor}; vae-deploy streams Wan VAEs that "
                              f"compress it by {STEP_FRAMES}, as diffusers' encode assumes")
        mean, std = list(cfg.latents_mean), list(cfg.latents_std)
        if len(mean) != self.latent_channels or len(std) != self.latent_channels:
            raise ConfigError(f"AutoencoderKLWan config: latents_mean and latents_std need z_dim = "
                              f"{self.latent_channels} entries, got {len(mean)} and {len(std)}")
        # diffusers' Wan pipelines map VAE latents to the diffusion space as (z - latents_mean) * (1 /
        # latents_std): diffusers 0.42.1 pipelines/wan/pipeline_wan_i2v.py, prepare_latents, line 462
        # `latent_condition = (latent_condition - latents_mean) * latents_std` with `latents_std = 1.0 /
        # latents_std` (line 448); pipeline_wan.py line 672 inverts it before decoding.
        self.latent_normalization = {"shift": [float(m) for m in mean],
                                     "scale": [1.0 / float(s) for s in std]}
        self.enc_state, self.dec_state = self._probe()
        self.split_point = self._probe_split()

    # ---- the contract's state shapes
    def encoder_state_shapes(self, batch, height, width) -> list[tuple]:
        return self.enc_state.shapes(batch, height, width)

    def decoder_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        return self.dec_state.shapes(batch, latent_h, latent_w)

    # ---- between the contract's layout and diffusers'
    def _model_input(self, video: torch.Tensor) -> torch.Tensor:
        """NTCHW in [0, 1] -> NCTHW in [-1, 1], patchified as diffusers' `_encode` does."""
        x = (video * 2 - 1).permute(0, 2, 1, 3, 4)
        if self.vae.config.patch_size is not None:
            x = _diffusers_wan().patchify(x, patch_size=self.vae.config.patch_size)
        return x

    def _latents(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output -> (mean, logvar) NTCHW, as `DiagonalGaussianDistribution` splits and clamps
        quant_conv's output (quant_conv is 1x1x1, so per chunk equals diffusers' once over the clip)."""
        mean, logvar = torch.chunk(self.vae.quant_conv(out), 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        return mean.permute(0, 2, 1, 3, 4), logvar.permute(0, 2, 1, 3, 4)

    def _video(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's output -> NTCHW in [0, 1], unpatchified and clamped as diffusers' `_decode` does."""
        if self.vae.config.patch_size is not None:
            out = _diffusers_wan().unpatchify(out, patch_size=self.vae.config.patch_size)
        out = torch.clamp(out, min=-1.0, max=1.0)
        return ((out + 1) / 2).permute(0, 2, 1, 3, 4)

    def _check_frames(self, x: torch.Tensor, what: str, ok: bool, want: str) -> None:
        # a wrong length would not fail inside diffusers, only give other latents (Wan 2.2's AvgDown3D pads)
        if not torch.jit.is_tracing() and not ok:
            raise InputShapeError(f"AutoencoderKLWan {what} takes {want}, got {tuple(x.shape)}")

    # ---- encoder
    def encode_first(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Frame 0 alone (N, 1, C, H, W) -> (mean, logvar, *present), the first chunk of diffusers' encode."""
        self._check_frames(video, "encode_first", video.shape[1] == FIRST_FRAMES, f"{FIRST_FRAMES} frame")
        n, _, _, h, w = video.shape
        cache = self.enc_state.empty()
        out = self.vae.encoder(self._model_input(video), feat_cache=cache, feat_idx=[0])
        return (*self._latents(out), *self.enc_state.present(cache, self.enc_state.zeros(video, n, h, w)))

    def encode_step(self, video: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """4k frames after the first -> (mean, logvar, *present); 4 frames at a time is diffusers' own walk,
        more at once gives the same latents (every layer is causal and per-frame otherwise)."""
        tf = self.temporal_factor
        self._check_frames(video, "encode_step", video.shape[1] > 0 and video.shape[1] % tf == 0,
                           f"a positive multiple of {tf} frames")
        cache = self.enc_state.cache(past)
        out = self.vae.encoder(self._model_input(video), feat_cache=cache, feat_idx=[0])
        return (*self._latents(out), *self.enc_state.present(cache, list(past)))

    # ---- decoder
    def decode_first(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The first latent frame (N, 1, Cl, h, w) -> (video (N, 1, C, H, W), *present)."""
        self._check_frames(z, "decode_first", z.shape[1] == 1, "1 latent frame")
        n, _, _, h, w = z.shape
        cache = self.dec_state.empty()
        x = self.vae.post_quant_conv(z.permute(0, 2, 1, 3, 4))
        out = self.vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=True)
        return (self._video(out), *self.dec_state.present(cache, self.dec_state.zeros(z, n, h, w)))

    def decode_step(self, z: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """t later latent frames -> (video (N, 4t, C, H, W), *present)."""
        cache = self.dec_state.cache(past)
        x = self.vae.post_quant_conv(z.permute(0, 2, 1, 3, 4))
        out = self.vae.decoder(x, feat_cache=cache, feat_idx=[0])
        return (self._video(out), *self.dec_state.present(cache, list(past)))

    # ---- a copy for measuring receptive fields (export/tiling.py)
    def narrow(self) -> WanVAE:
        """The same geometry (kernels, strides, blocks, patches, latent channels) at the narrowest widths,
        with seeded random weights: a receptive field does not depend on channel counts, and the gradients
        that measure it on Wan 2.1's own widths take more than 20 GB at the sizes measured."""
        widths = {"base_dim": NARROW_WIDTH}
        if self.vae.config.get("decoder_base_dim"):
            widths["decoder_base_dim"] = NARROW_WIDTH
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return wrap(type(self.vae).from_config(self.vae.config, **widths))

    # ---- the parts split at latent resolution (LatentSplit), for exact spatial tiles
    def encoder_latent_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        """The states of the encoder's latent part, in latent units (they are the encoder's last ones)."""
        return self._encoder_latent_state.shapes(batch, latent_h, latent_w)

    def encode_pixels_first(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Frame 0 alone -> (features (N, 1, C, h, w), *present of the pixel part)."""
        return self._part(self._encoder_pixel_state, video, None,
                          lambda cache: (_ntchw(self._encoder_pixels(self._model_input(video), cache)),))

    def encode_pixels_step(self, video: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._part(self._encoder_pixel_state, video, past,
                          lambda cache: (_ntchw(self._encoder_pixels(self._model_input(video), cache)),))

    def encode_latents_first(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The first latent frame's features -> (mean, logvar, *present of the latent part)."""
        return self._part(self._encoder_latent_state, features, None,
                          lambda cache: self._latents(self._encoder_latents(_ncthw(features), cache)))

    def encode_latents_step(self, features: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._part(self._encoder_latent_state, features, past,
                          lambda cache: self._latents(self._encoder_latents(_ncthw(features), cache)))

    def decode_latents_first(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The first latent frame -> (features (N, 1, C, h, w), *present of the latent part)."""
        return self._part(self._decoder_latent_state, z, None, lambda cache: (_ntchw(
            self._decoder_latents(self.vae.post_quant_conv(_ncthw(z)), cache)),))

    def decode_latents_step(self, z: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._part(self._decoder_latent_state, z, past, lambda cache: (_ntchw(
            self._decoder_latents(self.vae.post_quant_conv(_ncthw(z)), cache)),))

    def decode_pixels_first(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The first latent frame's features -> (video (N, 1, C, H, W), *present of the pixel part)."""
        return self._part(self._decoder_pixel_state, features, None, lambda cache: (self._video(
            self._decoder_pixels(_ncthw(features), cache, first_chunk=True)),))

    def decode_pixels_step(self, features: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._part(self._decoder_pixel_state, features, past, lambda cache: (self._video(
            self._decoder_pixels(_ncthw(features), cache, first_chunk=False)),))

    def _part(self, state: CacheState, x: torch.Tensor, past: tuple[torch.Tensor, ...] | None,
              compute) -> tuple[torch.Tensor, ...]:
        """`compute(cache)`'s outputs and the part's present: on the cache list of `past`, or of nothing
        (None: a first chunk, whose present starts from zeros at the size of `x`)."""
        if past is None:
            n, _, _, h, w = x.shape
            cache, start = state.empty(), state.zeros(x, n, h, w)
        else:
            cache, start = state.cache(past), list(past)
        outputs = compute(cache)
        return (*outputs, *state.present(cache, start))

    # diffusers' WanEncoder3d.forward and WanDecoder3d.forward, cut at the mid block's edge; each part
    # starts at its first cache slot, as the whole forward reaches it
    def _encoder_pixels(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        encoder, feat_idx = self.vae.encoder, [0]
        x = _cached_conv(encoder.conv_in, x, cache, feat_idx)
        for block in encoder.down_blocks:
            x = block(x, feat_cache=cache, feat_idx=feat_idx)
        return x

    def _encoder_latents(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        encoder, feat_idx = self.vae.encoder, [self.split_point.encoder_slot]
        x = encoder.mid_block(x, feat_cache=cache, feat_idx=feat_idx)
        x = encoder.nonlinearity(encoder.norm_out(x))
        return _cached_conv(encoder.conv_out, x, cache, feat_idx)

    def _decoder_latents(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        decoder, feat_idx = self.vae.decoder, [0]
        x = _cached_conv(decoder.conv_in, x, cache, feat_idx)
        return decoder.mid_block(x, feat_cache=cache, feat_idx=feat_idx)

    def _decoder_pixels(self, x: torch.Tensor, cache: list, first_chunk: bool) -> torch.Tensor:
        decoder, feat_idx = self.vae.decoder, [self.split_point.decoder_slot]
        for block in decoder.up_blocks:
            x = block(x, feat_cache=cache, feat_idx=feat_idx, first_chunk=first_chunk)
        x = decoder.nonlinearity(decoder.norm_out(x))
        return _cached_conv(decoder.conv_out, x, cache, feat_idx)

    def _probe_split(self) -> SplitPoint:
        """Where each cache list splits: the slots the encoder's pixel part and the decoder's latent part
        fill (they run first), counted by running them once on the probe's sizes."""
        param = next(self.vae.parameters())
        s = self.spatial_factor
        with torch.no_grad():
            video = torch.zeros(1, FIRST_FRAMES, self.in_channels, s, 2 * s, device=param.device,
                                dtype=param.dtype)
            cache = self.enc_state.empty()
            features = self._encoder_pixels(self._model_input(video), cache)
            encoder_slot, encoder_channels = len(filled_prefix(cache)), int(features.shape[1])
            z = torch.zeros(1, self.latent_channels, 1, 1, 2, device=param.device, dtype=param.dtype)
            cache = self.dec_state.empty()
            features = self._decoder_latents(self.vae.post_quant_conv(z), cache)
            decoder_slot, decoder_channels = len(filled_prefix(cache)), int(features.shape[1])
        self._encoder_pixel_state, encoder_latent = self.enc_state.split(encoder_slot)
        self._encoder_latent_state = encoder_latent.rescaled(s)  # its sizes in latent units
        self._decoder_latent_state, self._decoder_pixel_state = self.dec_state.split(decoder_slot)
        return SplitPoint(encoder_channels, decoder_channels, len(self._encoder_pixel_state.slots),
                          len(self._decoder_latent_state.slots), encoder_slot, decoder_slot)

    # ---- the parity reference: diffusers' public whole-clip API
    def reference_encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode((video * 2 - 1).permute(0, 2, 1, 3, 4)).latent_dist
        return dist.mean.permute(0, 2, 1, 3, 4), dist.logvar.permute(0, 2, 1, 3, 4)

    def reference_decode(self, z: torch.Tensor) -> torch.Tensor:
        sample = self.vae.decode(z.permute(0, 2, 1, 3, 4)).sample
        return ((sample + 1) / 2).permute(0, 2, 1, 3, 4)

    # ---- which cache slots are state, and their shapes
    def _probe(self) -> tuple[CacheState, CacheState]:
        """Run diffusers' own walk (first chunk, then one steady chunk) at one latent pixel by two, and record
        every slot the steady chunk leaves filled (causal_cache.py): the encoder's relative to the frame
        size, the decoder's relative to the latent size."""
        wan = _diffusers_wan()
        param = next(self.vae.parameters())
        s, tf = self.spatial_factor, self.temporal_factor
        with torch.no_grad():
            video = torch.zeros(1, FIRST_FRAMES + tf, self.in_channels, s, 2 * s, device=param.device,
                                dtype=param.dtype)
            cache: list = [None] * sum(isinstance(m, wan.WanCausalConv3d) for m in self.vae.encoder.modules())
            self.vae.encoder(self._model_input(video[:, :FIRST_FRAMES]), feat_cache=cache, feat_idx=[0])
            first = filled(cache)
            out = self.vae.encoder(self._model_input(video[:, FIRST_FRAMES:]), feat_cache=cache, feat_idx=[0])
            if tuple(out.shape[2:]) != (1, 1, 2):
                raise ConfigError(f"AutoencoderKLWan: a {tf}-frame {s}x{2 * s} chunk encodes to "
                                  f"{tuple(out.shape[2:])} latents, not (1, 1, 2): a layout vae-deploy "
                                  f"does not stream")
            encoder = CacheState.from_probe("AutoencoderKLWan encoder", cache, first, base=s,
                                            scale=lambda size: (1, s // size))

            z = torch.zeros(1, self.latent_channels, 2, 1, 2, device=param.device, dtype=param.dtype)
            cache = [None] * sum(isinstance(m, wan.WanCausalConv3d) for m in self.vae.decoder.modules())
            x = self.vae.post_quant_conv(z)
            self.vae.decoder(x[:, :, :1], feat_cache=cache, feat_idx=[0], first_chunk=True)
            first = filled(cache)
            out = self.vae.decoder(x[:, :, 1:], feat_cache=cache, feat_idx=[0])
            if out.shape[2] != tf:
                raise ConfigError(f"AutoencoderKLWan: one latent frame decodes to {out.shape[2]} frames, not "
                                  f"{tf}")
            decoder = CacheState.from_probe("AutoencoderKLWan decoder", cache, first, base=1,
                                            scale=lambda size: (size, 1))
        return encoder, decoder


def _ntchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 1, 3, 4)


_ncthw = _ntchw  # the same swap of axes 1 and 2, read the other way


def filled_prefix(cache: list) -> list:
    """The slots up to the last one a call filled: how far into the cache list it got."""
    used = filled(cache)
    return cache[:used[-1] + 1] if used else []


def _cached_conv(conv: nn.Module, x: torch.Tensor, cache: list, feat_idx: list[int]) -> torch.Tensor:
    """diffusers' inline step around conv_in and conv_out in WanEncoder3d/WanDecoder3d.forward: run the
    causal conv on its cached frames, then cache the last CACHE_T frames of its input (with the last cached
    frame in front when the chunk is one frame long)."""
    cache_t = _diffusers_wan().CACHE_T
    idx = feat_idx[0]
    cache_x = x[:, :, -cache_t:, :, :].clone()
    if cache_x.shape[2] < 2 and cache[idx] is not None:
        cache_x = torch.cat([cache[idx][:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
    x = conv(x, cache[idx])
    cache[idx] = cache_x
    feat_idx[0] += 1
    return x


def _nearest_for_export(vae: nn.Module) -> None:
    """Switch Wan's 2x spatial upsampling from 'nearest-exact' to 'nearest'.

    The legacy ONNX exporter has no symbolic for 'nearest-exact'. At an integer scale of exactly 2 both pick
    source pixel floor(dst / 2) (nearest-exact: floor((dst + 0.5) / 2), the same integer), so the outputs are
    identical; other scales are left as they are.
    """
    wan = _diffusers_wan()
    for module in vae.modules():
        if isinstance(module, wan.WanUpsample) and module.mode == "nearest-exact":
            scale = module.scale_factor
            scales = scale if isinstance(scale, (tuple, list)) else (scale,)
            if all(float(f) == 2.0 for f in scales):
                module.mode = "nearest"


def wrap(model: nn.Module) -> nn.Module:
    """An AutoencoderKLWan -> a module keeping the causal video VAE contract (it holds `model` as `vae`)."""
    _nearest_for_export(model)
    return WanVAE(model.eval())


__all__ = ["WanVAE", "wrap"]
