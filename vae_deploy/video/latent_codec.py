"""A video model behind a runner, as a streaming codec: fitted frames -> fp16 latents -> frames (no torch).

Layout: frames (T, C, H, W) float32 in [0, 1] (one clip, no batch axis: the pipeline streams one video);
latents (t, C_lat, h, w) float16, t = ceil(T / temporal_factor), h = H / spatial_factor.

Latents leave the encoder as float32 `mu` (no sampling: reconstruction uses the mean) and are rounded to
float16 at once, the precision the `.vaelat` container stores; the decoder always gets those rounded values
(back as float32). So `run` (encode and decode in one pass) and `encode` then `decode` (through a file) hand
the decoder bit-identical inputs in identical chunks, and produce identical frames.

A temporal factor f > 1 (causal3d with temporal downsampling) groups f frames per latent frame. Every chunk
but the last must hold a multiple of f frames; the last may hold fewer, and is padded by repeating its last
frame (`models.streaming.pad_time`, the same rule as the PyTorch StreamEncoder); the caller drops the
decoder's extra frames, so the output has exactly as many frames as the input. A model whose first latent
frame has its own rule (Wan: 1 frame, then 4 per latent frame, so clips of 1 + 4k frames) takes
`first_frames` more frames in its first chunk and one more latent frame in its first decoder chunk; the
same padding rule makes any length work.

Frames may run in spatial tiles (runtime/tiled_stream.py): a `TileRequest` (--tile, --tile-budget)
checked against the manifest's tiling records when the codec opens, so a bad request is refused before
any frame is read. Exact tiling gives the untiled latents and frames within float rounding; a blended
model says so in one `note:` line when it first tiles.

Models with a latent normalization (runtime/latent_space.py) give latents in the diffusion model's space
unless the codec is asked for raw ones; the decoder side undoes it. Rounding to float16 happens in the space
stored, so `run` and `encode` then `decode` still see identical latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vae_deploy.errors import ConfigError, DataError, InputShapeError, ModelFormatError
from vae_deploy.runtime.latent_space import LATENT_SPACES, NORMALIZED, RAW, LatentNormalization
from vae_deploy.runtime.manifest import Manifest
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.tile_plan import OFF, TilePlanner, TileRequest
from vae_deploy.runtime.tiled_stream import open_tiled_stream
from vae_deploy.video.fit import DEFAULT_SHORT_SIDE
from vae_deploy.video.writers import note


def check_finite_latents(latents: np.ndarray, stored_from: np.ndarray, space: str) -> None:
    """Refuse fp16 latents that are not finite: a value beyond float16's range (65504) rounds to inf, and a
    file of infinities decodes to garbage while `encode` would exit 0 (a normalization with a tiny
    latents_std or a huge scaling_factor does it). `stored_from` is the float32 array they were rounded
    from, for the message."""
    if np.isfinite(latents).all():
        return
    if not np.isfinite(stored_from).all():
        raise DataError("the encoder returned non-finite latents (NaN or inf): the model is broken")
    peak = float(np.abs(stored_from).max())
    advice = ("check the manifest's latent normalization (scale, shift), or store --raw-latents"
              if space == NORMALIZED else "this model's latents do not fit the fp16 a .vaelat file stores")
    raise DataError(f"latents overflow fp16: the {space} latents reach {peak:.3g}, beyond float16's "
                    f"{float(np.finfo(np.float16).max):g}; {advice}")


_NOTED: set[str] = set()


def note_once(line: str) -> None:
    """A note once per process: encode-dataset's workers open a codec per video, and say it once each."""
    if line not in _NOTED:
        _NOTED.add(line)
        note(line)


@dataclass(frozen=True)
class VideoModelInfo:
    """What the pipeline needs to know about a video model, read from its manifest."""

    kind: str
    channels: int  # image channels the encoder takes (3 RGB, 1 luma)
    spatial_factor: int  # frame height and width must be multiples of this
    temporal_factor: int  # frames per latent frame
    latent_channels: int
    short_side: int  # working short side the model was trained at (manifest preprocessing), or the default
    fingerprint: str  # the manifest's model fingerprint: latent files name the model that made them
    first_frames: int = 0  # frames of the first latent frame when it has its own rule (Wan: 1); 0: none
    normalization: LatentNormalization | None = None  # the diffusion model's latent space, if it has one

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> VideoModelInfo:
        enc, dec = manifest.graph("encoder"), manifest.graph("decoder")
        video = enc.inputs[0]
        if video.layout != "NTCHW" or not enc.stream_axis:
            raise ModelFormatError(f"a {manifest.kind!r} model is not a video model (its encoder takes "
                                   f"{video.layout or 'unlabelled'} {tuple(video.shape)}, not NTCHW clips); "
                                   f"video commands need a model exported from a video run")
        channels, latent = video.shape[2], dec.inputs[0].shape[2]
        if not isinstance(channels, int) or not isinstance(latent, int):
            raise ModelFormatError(f"the manifest leaves the channel dimension of {video.name} or "
                                   f"{dec.inputs[0].name} symbolic; re-export the model")
        multiples = enc.dim_multiples
        short = manifest.preprocessing.get("short_side") or DEFAULT_SHORT_SIDE
        return cls(kind=manifest.kind, channels=channels,
                   spatial_factor=max(multiples.get("height", 1), multiples.get("width", 1)),
                   temporal_factor=multiples.get(enc.stream_axis, 1), latent_channels=latent,
                   short_side=int(short), fingerprint=manifest.fingerprint, first_frames=enc.first_length,
                   normalization=LatentNormalization.from_preprocessing(manifest.preprocessing, latent))

    def latent_count(self, frames: int) -> int:
        """Latent frames of a clip of `frames` frames (padded as the module docstring says)."""
        if frames <= 0:
            return 0
        f, first = self.temporal_factor, self.first_frames
        if first:
            return 1 + -(-max(0, frames - first) // f)
        return -(-frames // f)

    def encoder_frames(self, frames: int, first_chunk: bool) -> int:
        """The frames the encoder takes for a chunk of `frames` (the stream's first chunk or a later one):
        a partial group padded up to whole groups, a first chunk short of the first rule up to it (module
        docstring). More than `frames` only for the stream's last chunk."""
        first = self.first_frames if first_chunk else 0
        if frames < first:
            return first
        return frames + (-(frames - first)) % self.temporal_factor

    def stored_space(self, asked: str) -> str:
        """The space latents are stored in when `asked` (NORMALIZED or RAW) is asked for: a model without a
        normalization has only raw latents."""
        return NORMALIZED if asked == NORMALIZED and self.normalization is not None else RAW

    @property
    def first_latents(self) -> int:
        """Latent frames the first decoder chunk holds beyond a steady chunk's (1 with a first rule)."""
        return 1 if self.first_frames else 0

    def check_chunk(self, chunk: int) -> None:
        f = self.temporal_factor
        if chunk < 1:
            raise ConfigError(f"--chunk must be a positive number of frames, got {chunk}")
        if chunk % f:
            below = chunk - chunk % f  # the nearest multiples; 0 is not a chunk (--chunk 1 for f = 4: use 4)
            nearest = " or ".join(str(c) for c in (below, below + f) if c >= f)
            raise ConfigError(f"--chunk {chunk} is not a multiple of the model's temporal factor {f} (this "
                              f"{self.kind} model turns every {f} frames into one latent frame); use "
                              f"{nearest}")

    def latent_shape(self, model_size: tuple[int, int]) -> tuple[int, int, int]:
        """(C_lat, h, w) of one latent frame for model input `model_size` (width, height)."""
        w, h = model_size
        return self.latent_channels, h // self.spatial_factor, w // self.spatial_factor


class LatentRules:
    """The stream-independent half of LatentCodec, for one video: the chunk rules (the first chunk's extra
    frames, the last chunk's padding), the latent space and the fp16 rounding. LatentCodec runs them
    around its own stream; video/multi_source.py runs them around a slot of BatchedStreams, so both give
    the decoder the same fp16-rounded latents (module docstring)."""

    def __init__(self, info: VideoModelInfo, latent_space: str = NORMALIZED):
        if latent_space not in LATENT_SPACES:
            raise ConfigError(f"latent space must be one of {', '.join(LATENT_SPACES)}, got {latent_space!r}")
        self.info = info
        # Only a model with a normalization has a normalized space; its latents are raw otherwise.
        self.latent_space = info.stored_space(latent_space)
        self.normalization = info.normalization if self.latent_space == NORMALIZED else None
        self._ended = False
        self._started = False

    def pad(self, frames: np.ndarray) -> np.ndarray:
        """Fitted frames (T, C, H, W) float32 -> the frames the encoder takes for this chunk: a partial last
        group padded by repeating its last frame (module docstring)."""
        if frames.ndim != 4 or frames.shape[1] != self.info.channels:
            raise InputShapeError(f"frames must be (T, {self.info.channels}, H, W), got {frames.shape}")
        if self._ended:
            raise InputShapeError("the stream's last (partial) group was already encoded; open a new codec")
        t = frames.shape[0]
        extra = self.info.encoder_frames(t, first_chunk=not self._started) - t
        self._started = True
        if extra:
            self._ended = True
            frames = np.concatenate([frames, np.repeat(frames[-1:], extra, axis=0)])
        return frames

    def store(self, mu: np.ndarray) -> np.ndarray:
        """The encoder's mean (t, C_lat, h, w) float32 -> the fp16 latents stored, in the codec's space."""
        if self.normalization is not None:
            mu = self.normalization.normalize(mu)
        with np.errstate(over="ignore"):  # an overflow is refused below, in one line, not warned about
            latents = mu.astype(np.float16)
        check_finite_latents(latents, mu, self.latent_space)
        return latents

    def unstore(self, latents: np.ndarray) -> np.ndarray:
        """fp16 latents (t, C_lat, h, w) -> the float32 raw latents the decoder takes."""
        if latents.dtype != np.float16:
            raise InputShapeError(f"latents must be float16 (the stored precision), got {latents.dtype}")
        z = latents.astype(np.float32)
        if self.normalization is not None:
            z = self.normalization.denormalize(z)
        return z


class LatentCodec:
    """One video through one runner's streaming session (see the module docstring)."""

    def __init__(self, runner: Runner, info: VideoModelInfo | None = None, latent_space: str = NORMALIZED,
                 tiling: TileRequest | None = None, model_size: tuple[int, int] | None = None):
        self.runner = runner
        self.info = info or VideoModelInfo.from_manifest(runner.manifest)
        # None or off: the runner's own stream, untouched; otherwise tiles when the request (or auto's
        # budget) asks for them, each tile with a stream of its own.
        planner = None if tiling is None or tiling.tile == OFF else TilePlanner(runner.manifest, tiling,
                                                                                note_once)
        if planner is not None and model_size is not None:  # the frames' (width, height), when known
            planner.check_frame(*model_size)
        self.stream = open_tiled_stream(runner, planner)
        self.rules = LatentRules(self.info, latent_space)
        self.normalization, self.latent_space = self.rules.normalization, self.rules.latent_space

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Fitted frames (T, C, H, W) float32 -> fp16 latents (ceil(T / f), C_lat, h, w).

        T must be a multiple of f, except for the stream's last chunk, which is padded (module docstring).
        """
        frames = self.rules.pad(frames)
        mu = self.stream.encode(frames[None])[0][0]  # the mean: reconstruction never samples
        return self.rules.store(mu)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """fp16 latents (t, C_lat, h, w) -> frames (t * f, C, H, W) float32 (fewer in a first chunk with
        a first rule)."""
        return self.stream.decode(self.rules.unstore(latents)[None])[0]

