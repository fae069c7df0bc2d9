"""The streaming contract every video VAE implements, and the helpers built on it.

Layout: video NTCHW (batch, time, channels, height, width), float32 in [0, 1]; latents NTChw.

Every video model exposes one step form for its encoder and its decoder (docs/architecture.md):

    encode_step(chunk NTCHW, *past) -> (mu, logvar, *present)
    decode_step(z NTChw, *past)     -> (frames, *present)

`past`/`present` are a fixed list of tensors (possibly empty) whose initial value is zeros; their shapes
come from `encoder_state_shapes(batch, height, width)` / `decoder_state_shapes(batch, latent_h, latent_w)`.
Those two functions use only + - * // on their arguments, so the export can call them with symbolic
dimensions and record the formulas in the manifest. The full-sequence `encode`/`decode` are one step from the
zero state through the SAME modules (TAEHV style), which is what makes "chunked equals full" hold by
construction: each step sees exactly the context the full pass would, and nothing else.

Chunks must hold a multiple of `temporal_factor` frames (the causal 3D VAE's temporal stride; 1 for the
others). `StreamEncoder` lifts that restriction for callers that get frames one at a time: it buffers the
remainder and, at `flush()`, pads the last partial group by repeating its last frame (`pad_time`), so a
stream of any length encodes exactly like `model.encode(pad_time(video, temporal_factor))`; the decoder then
yields `padded` extra frames at the end, which the caller drops (`StreamEncoder.frames_in` says how many
frames were real).
"""

from __future__ import annotations

import torch
from torch import nn

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.models.noise import eps_like


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * sigma, eps ~ N(0, I): the reparameterization trick (Kingma & Welling, 2014)."""
    return mu + eps_like(mu) * torch.exp(logvar / 2)  # torch.randn_like(mu) in one process (models/noise.py)


def pad_time(video: torch.Tensor, multiple: int) -> torch.Tensor:
    """Repeat the last frame of an NT... tensor until its length is a multiple of `multiple`.

    Repeating (rather than zeros) keeps the padded group close to real content, so the real frames of
    that group decode as well as they would in the middle of a clip.
    """
    extra = (-video.shape[1]) % multiple
    if extra == 0:
        return video
    return torch.cat([video, video[:, -1:].expand(-1, extra, *video.shape[2:])], dim=1)


class VideoVAE(nn.Module):
    """Base class: layout checks, zero states, full-sequence paths and `forward` for training.

    Subclasses set `kind`, `config`, `in_channels`, `latent_channels`, `spatial_factor`, `temporal_factor`
    and implement `encode_step`, `decode_step` and the two state-shape functions.
    """

    kind: str = ""
    in_channels: int
    latent_channels: int
    spatial_factor: int
    temporal_factor: int = 1

    # ---- the contract subclasses implement ----
    def encoder_state_shapes(self, batch, height, width) -> list[tuple]:
        raise NotImplementedError

    def decoder_state_shapes(self, batch, latent_h, latent_w) -> list[tuple]:
        raise NotImplementedError

    def encode_step(self, chunk: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def decode_step(self, z: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def warm_start_from(self, source: nn.Module) -> None:
        """Copy a trained model's weights into the parts this design shares with it (train.init_from).

        A model of the same kind and config is fine-tuned: every weight is copied. Any other model goes to
        `warm_start_from_other_design`."""
        kind = getattr(source, "kind", "?")
        if kind != self.kind:
            return self.warm_start_from_other_design(source)
        if source.config != self.config:
            raise ConfigError(f"the {kind!r} model to start from has another config: {source.config} "
                              f"(this recipe: {self.config})")
        self.load_state_dict(source.state_dict())

    def warm_start_from_other_design(self, source: nn.Module) -> None:
        """Designs that can start from another design (e.g. a FrameVAE) override this; the rest refuse."""
        raise ConfigError(f"a {self.kind!r} model cannot start from a {getattr(source, 'kind', '?')!r} model")

    # ---- checks shared by every model (skipped while tracing: they are Python, not graph ops) ----
    def check_video(self, video: torch.Tensor, what: str = "video") -> None:
        if torch.jit.is_tracing():
            return
        s, t = self.spatial_factor, self.temporal_factor
        if video.dim() != 5 or video.shape[2] != self.in_channels:
            raise InputShapeError(f"{self.kind}: expected {what} (N, T, {self.in_channels}, H, W), "
                                  f"got {tuple(video.shape)}")
        if video.shape[3] % s or video.shape[4] % s or video.shape[3] == 0 or video.shape[4] == 0:
            raise InputShapeError(f"{self.kind}: {what} height and width must be positive multiples of {s}, "
                                  f"got {tuple(video.shape)}")
        if video.shape[1] == 0 or video.shape[1] % t:
            raise InputShapeError(f"{self.kind}: {what} length must be a positive multiple of {t} frames, "
                                  f"got {tuple(video.shape)} (pad with pad_time, or use StreamEncoder)")

    def check_latents(self, z: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return
        if z.dim() != 5 or z.shape[2] != self.latent_channels or z.shape[1] == 0:
            raise InputShapeError(f"{self.kind}: expected latents (N, T, {self.latent_channels}, h, w), "
                                  f"got {tuple(z.shape)}")

    def check_state(self, past: tuple[torch.Tensor, ...], shapes: list[tuple], what: str) -> None:
        if torch.jit.is_tracing():
            return
        got = [tuple(p.shape) for p in past]
        want = [tuple(int(d) for d in s) for s in shapes]
        if got != want:
            raise InputShapeError(f"{self.kind}: {what} state must be {want}, got {got}")

    # ---- zero states ----
    def init_encoder_state(self, batch: int, height: int, width: int, device=None,
                           dtype=torch.float32) -> list[torch.Tensor]:
        return [torch.zeros(s, device=device, dtype=dtype)
                for s in self.encoder_state_shapes(batch, height, width)]

    def init_decoder_state(self, batch: int, latent_h: int, latent_w: int, device=None,
                           dtype=torch.float32) -> list[torch.Tensor]:
        return [torch.zeros(s, device=device, dtype=dtype)
                for s in self.decoder_state_shapes(batch, latent_h, latent_w)]

    # ---- full-sequence paths: one step from the zero state ----
    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video (N, T, C, H, W) in [0, 1] -> (mu, logvar), each (N, T / temporal_factor, latent, h, w)."""
        self.check_video(video)
        n, _, _, h, w = video.shape
        mu, logvar, *_ = self.encode_step(video, *self.init_encoder_state(n, h, w, video.device, video.dtype))
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, t, latent, h, w) -> video (N, t * temporal_factor, C, H, W) in [0, 1]."""
        self.check_latents(z)
        n, _, _, h, w = z.shape
        frames, *_ = self.decode_step(z, *self.init_decoder_state(n, h, w, z.device, z.dtype))
        return frames

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, mu, logvar) with a reparameterized sample in between."""
        mu, logvar = self.encode(video)
        return self.decode(reparameterize(mu, logvar)), mu, logvar


class StreamEncoder:
    """Encode frames as they arrive, in chunks of any size, with the model's streaming state.

    Frames that do not fill a whole temporal group (`temporal_factor`) wait in a buffer; `flush()` pads
    the last partial group by repeating its last frame and encodes it (see the module docstring).
    """

    def __init__(self, model: VideoVAE, batch: int, height: int, width: int):
        self.model = model
        self.height, self.width = height, width
        param = next(model.parameters())
        self.state = model.init_encoder_state(batch, height, width, param.device, param.dtype)
        self.pending = torch.zeros(batch, 0, model.in_channels, height, width, device=param.device,
                                   dtype=param.dtype)
        self.frames_in = 0  # real frames received so far
        self.padded = 0  # frames added by flush()
        self.flushed = False
        self.latent_shape = (batch, 0, model.latent_channels, height // model.spatial_factor,
                             width // model.spatial_factor)

    def _step(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frames.shape[1] == 0:
            empty = torch.zeros(self.latent_shape, device=frames.device, dtype=frames.dtype)
            return empty, empty.clone()
        mu, logvar, *self.state = self.model.encode_step(frames, *self.state)
        return mu, logvar

    def push(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add frames (N, T, C, H, W), T >= 0; returns the latents that are now complete (maybe none)."""
        want = (self.pending.shape[0], "T", *self.pending.shape[2:])
        if chunk.dim() != 5 or chunk.shape[0] != want[0] or tuple(chunk.shape[2:]) != tuple(want[2:]):
            raise InputShapeError(f"{self.model.kind}: stream expects chunks ({', '.join(map(str, want))}), "
                                  f"got {tuple(chunk.shape)}")
        if self.flushed:
            raise InputShapeError(f"{self.model.kind}: stream was flushed; start a new one")
        self.frames_in += chunk.shape[1]
        frames = torch.cat([self.pending, chunk], dim=1)
        ready = frames.shape[1] - frames.shape[1] % self.model.temporal_factor
        self.pending = frames[:, ready:]
        return self._step(frames[:, :ready])

    def flush(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode what is buffered, padded to a whole temporal group; sets `padded`."""
        rest = self.pending
        self.pending = rest[:, :0]
        self.flushed = True
        if rest.shape[1] == 0:
            return self._step(rest)
        padded = pad_time(rest, self.model.temporal_factor)
        self.padded = padded.shape[1] - rest.shape[1]
        return self._step(padded)


class StreamDecoder:
    """Decode latents as they arrive, in chunks of any number of latent frames."""

    def __init__(self, model: VideoVAE, batch: int, latent_h: int, latent_w: int):
        self.model = model
        param = next(model.parameters())
        self.state = model.init_decoder_state(batch, latent_h, latent_w, param.device, param.dtype)

    def push(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, t, latent, h, w), t >= 0 -> frames (N, t * temporal_factor, C, H, W)."""
        m = self.model
        if z.dim() == 5 and z.shape[1] == 0:  # nothing complete yet (a StreamEncoder still buffering)
            return z.new_zeros(z.shape[0], 0, m.in_channels, z.shape[3] * m.spatial_factor,
                               z.shape[4] * m.spatial_factor)
        self.model.check_latents(z)
        frames, *self.state = self.model.decode_step(z, *self.state)
        return frames
