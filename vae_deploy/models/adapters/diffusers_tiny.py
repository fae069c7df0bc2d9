"""diffusers' AutoencoderTiny (TAESD and its SDXL/SD3/Flux variants) as a frame VAE of the adapter contract
(contract.py): a deterministic encoder (the mean only, has_logvar False), images in [0, 1] at the boundary.

`encode`/`decode` are diffusers' `AutoencoderTiny.encode(x).latents` and `decode(z).sample` without tiling
or slicing, through the model's own `encoder`/`decoder`; `reference_encode`/`reference_decode` call
diffusers' public API itself.
"""

from __future__ import annotations

import torch
from torch import nn

from vae_deploy.errors import ConfigError
from vae_deploy.models.adapters.diffusers_kl import check_image_channels, fold_frames, unfold_frames


def tiny_spatial_factor(config) -> int:
    """2 ** the encoder's downsampling stages: EncoderTiny's first stage keeps the size and every later one
    starts with a stride-2 conv. DecoderTiny upsamples by upsampling_scaling_factor after every stage but
    the last; a config whose decoder does not undo the encoder cannot round-trip a frame."""
    down = 2 ** (len(config.num_encoder_blocks) - 1)
    up = int(config.upsampling_scaling_factor) ** (len(config.num_decoder_blocks) - 1)
    if up != down:
        raise ConfigError(f"AutoencoderTiny config: the encoder downsamples {down}x but the decoder "
                          f"upsamples {up}x (num_encoder_blocks {list(config.num_encoder_blocks)}, "
                          f"num_decoder_blocks {list(config.num_decoder_blocks)}, "
                          f"upsampling_scaling_factor {config.upsampling_scaling_factor})")
    return down


class DiffusersTiny(nn.Module):
    """An AutoencoderTiny keeping the frame-VAE contract; its state_dict is the diffusers model's under
    `vae.`."""

    has_logvar = False

    def __init__(self, model: nn.Module):
        super().__init__()
        config = model.config
        check_image_channels(config, "AutoencoderTiny config")
        self.vae = model
        self.in_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.spatial_factor = tiny_spatial_factor(config)
        # The pipelines' (z - shift_factor) * scaling_factor; configs saved before shift_factor existed lack
        # it.
        self.latent_normalization = {"scale": float(config.scaling_factor),
                                     "shift": float(config.get("shift_factor") or 0.0)}
        # Same reason as the KL adapter: the graphs are the untiled computation, so is the reference.
        model.disable_tiling()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] -> the latents, as diffusers' encode(x).latents.

        EncoderTiny maps diffusers' [-1, 1] back to TAESD's [0, 1] itself (x.add(1).div(2)), so this x * 2 - 1
        and that undo each other in exact arithmetic. Both stay: the graph is then diffusers' computation
        to the last rounding, which is what it is checked against."""
        return self.vae.encoder(images * 2 - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, Cl, h, w) -> images (N, C, H, W): (decode(z).sample + 1) / 2, not clamped (as
        diffusers)."""
        return (self.vae.decoder(z) + 1) / 2

    def reference_encode(self, video: torch.Tensor) -> torch.Tensor:
        """diffusers' own public encode over the frames of a clip (N, T, C, H, W) in [0, 1]."""
        return unfold_frames(self.vae.encode(fold_frames(video) * 2 - 1).latents, video)

    def reference_decode(self, z: torch.Tensor) -> torch.Tensor:
        """diffusers' own public decode over the latent frames (N, t, Cl, h, w)."""
        return unfold_frames((self.vae.decode(fold_frames(z)).sample + 1) / 2, z)


def wrap(model: nn.Module) -> nn.Module:
    """A diffusers AutoencoderTiny as a module keeping the frame-VAE contract (contract.py)."""
    return DiffusersTiny(model)
