"""diffusers' AutoencoderKL (Stable Diffusion 1.x/2.x, SDXL, SD3, Flux) as a frame VAE of the adapter contract
(contract.py): every frame on its own, images in [0, 1] at the boundary, diffusers' [-1, 1] inside.

`encode`/`decode` are the computation of diffusers' `AutoencoderKL.encode(x).latent_dist` and
`decode(z).sample` without tiling or slicing, written with the model's own submodules so that the ONNX trace
is one clean graph; `reference_encode`/`reference_decode` call diffusers' public API itself, which is what the
streamed graphs are checked against.
"""

from __future__ import annotations

import torch
from torch import nn

from vae_deploy.errors import ConfigError


def fold_frames(video: torch.Tensor) -> torch.Tensor:
    """(N, T, C, H, W) -> (N * T, C, H, W): a frame VAE sees every frame as an image of the batch."""
    return video.reshape(video.shape[0] * video.shape[1], *video.shape[2:])


def unfold_frames(images: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """The inverse of fold_frames for a result computed from `video`'s frames."""
    return images.reshape(video.shape[0], video.shape[1], *images.shape[1:])


def check_image_channels(config, where: str) -> None:
    """The contract's decoder returns the channels its encoder takes (the video is round-tripped)."""
    if int(config.out_channels) != int(config.in_channels):
        raise ConfigError(f"{where}: out_channels {config.out_channels} differs from in_channels "
                          f"{config.in_channels}; vae-deploy streams VAEs whose decoder returns the images "
                          f"their encoder takes")


def kl_latent_normalization(config) -> dict:
    """The diffusion model's latent space, as the contract's {"scale": s, "shift": m}: (z - m) * s.

    Followed: diffusers' pipeline_stable_diffusion_xl.py (and its img2img), which with both latents_mean and
    latents_std in the config decodes `latents * latents_std / scaling_factor + latents_mean` and encodes
    `(z - latents_mean) * scaling_factor / latents_std`: per channel, shift = mean and
    scale = scaling_factor / std (shift_factor is not used on that path). Otherwise diffusers'
    pipeline_stable_diffusion_3.py (its img2img encodes `(z - shift_factor) * scaling_factor`) and
    pipeline_flux.py, with shift_factor absent (None, so 0) for SD 1.x/2.x and SDXL.
    """
    scale = float(config.scaling_factor)
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is not None and std is not None:
        channels = int(config.latent_channels)
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"AutoencoderKL config: latents_mean and latents_std need {channels} values "
                              f"(latent_channels), got {len(mean)} and {len(std)}")
        return {"scale": [scale / float(s) for s in std], "shift": [float(m) for m in mean]}
    return {"scale": scale, "shift": float(config.get("shift_factor") or 0.0)}


class DiffusersKL(nn.Module):
    """An AutoencoderKL keeping the frame-VAE contract; its state_dict is the diffusers model's under
    `vae.`."""

    has_logvar = True

    def __init__(self, model: nn.Module):
        super().__init__()
        config = model.config
        check_image_channels(config, "AutoencoderKL config")
        self.vae = model
        self.in_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        # One 2x downsampling per encoder block but the last (diffusers' own vae_scale_factor).
        self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)
        self.latent_normalization = kl_latent_normalization(config)
        # The graphs are the untiled computation; the reference must be the same one. diffusers tiles any
        # frame larger than sample_size once tiling is on, which would make the parity check compare two
        # different computations. (Slicing splits the batch only: the same numbers, so it may stay.)
        model.disable_tiling()
        # The mid blocks' attention keeps diffusers' default processor (AttnProcessor2_0): its
        # F.scaled_dot_product_attention exports with the legacy exporter from opset 14 on, with dynamic
        # batch, height and width (tests/models/test_diffusers_adapters.py runs the graphs in onnxruntime),
        # so there is nothing to switch.

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) in [0, 1] -> (mean, logvar), as diffusers' encode(x).latent_dist."""
        h = self.vae.encoder(images * 2 - 1)
        if self.vae.quant_conv is not None:  # config.use_quant_conv (False in the SD3 and Flux VAEs)
            h = self.vae.quant_conv(h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        # DiagonalGaussianDistribution clamps the logvar it keeps to [-30, 20]; so do we, so the two agree.
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, Cl, h, w) -> images (N, C, H, W), (decode(z).sample + 1) / 2 and NOT clamped: diffusers
        does not clamp there either (the pipeline clamps when it writes pixels)."""
        if self.vae.post_quant_conv is not None:  # config.use_post_quant_conv
            z = self.vae.post_quant_conv(z)
        return (self.vae.decoder(z) + 1) / 2

    def reference_encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """diffusers' own public encode over the frames of a clip (N, T, C, H, W) in [0, 1]."""
        dist = self.vae.encode(fold_frames(video) * 2 - 1).latent_dist
        return unfold_frames(dist.mean, video), unfold_frames(dist.logvar, video)

    def reference_decode(self, z: torch.Tensor) -> torch.Tensor:
        """diffusers' own public decode over the latent frames (N, t, Cl, h, w)."""
        return unfold_frames((self.vae.decode(fold_frames(z)).sample + 1) / 2, z)


def wrap(model: nn.Module) -> nn.Module:
    """A diffusers AutoencoderKL as a module keeping the frame-VAE contract (contract.py)."""
    return DiffusersKL(model)
