"""Video tasks: clips NTCHW in [0, 1] for the video VAEs (frame, temporal, causal3d), MSE reconstruction.

`VideoTaskBase` holds what every video task shares: the loss (a Gaussian likelihood, `mse_reconstruction`,
plus `kl_weight` times the KL), the model checks, and the `evaluate` part (whole test clips streamed
through the model's step form: vae_deploy.training.video_evaluation). `VideoClipsTask` (`[data] kind =
"video"`) trains on random crops and clip windows of real videos, validates (picks the best epoch) on the
held-out ends of those videos (`data.valid_share`) and/or other videos (`data.valid`), and tests
(`evaluate`) on the `data.test` videos, which select nothing (vae_deploy.data.video says what each set
is). Moving MNIST lives in tasks/moving_mnist.py.

An epoch over endless random clips is not defined by the data, so the recipe defines it: `clips_per_epoch`
random clips, i.e. clips_per_epoch / batch_size optimizer steps, then a validation pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vae_deploy.data.stills import StillSet
from vae_deploy.data.video import VideoDataConfig, load_clip_sets, load_test_set
from vae_deploy.errors import ConfigError
from vae_deploy.models.losses import bce_reconstruction, mse_reconstruction, vae_loss
from vae_deploy.models.streaming import VideoVAE, reparameterize
from vae_deploy.training.tasks.base import Task, register_task
from vae_deploy.training.video_evaluation import EvalClip, evaluate_clips
from vae_deploy.video.sources import open_source

# Reconstruction terms by name (data configs are plain data). "mse": a Gaussian likelihood, for natural
# video; "bce": a Bernoulli likelihood, for near-binary frames such as Moving MNIST, where a sigmoid decoder
# trained with MSE on a mostly black canvas can saturate at black and stop learning (the MSE gradient carries
# the sigmoid's slope, the BCE gradient does not).
RECON_LOSSES = {"mse": mse_reconstruction, "bce": bce_reconstruction}


def random_flip(clips: torch.Tensor, generator: torch.Generator, batch: int | None = None,
                first: int = 0) -> torch.Tensor:
    """Mirror each clip (B, T, C, H, W) left-right with probability 1/2: twice the scenes from two videos.
    `clips` may be rows first.. of a batch of `batch` (a data-parallel rank's): the draws are the batch's."""
    batch = clips.shape[0] if batch is None else batch
    flip = (torch.rand(batch, generator=generator) < 0.5)[first:first + clips.shape[0]]
    if bool(flip.any()):
        clips = clips.clone()
        clips[flip] = clips[flip].flip(-1)
    return clips


def random_dark_borders(clips: torch.Tensor, probability: float, generator: torch.Generator,
                        batch: int | None = None, first: int = 0) -> torch.Tensor:
    """Give each clip (B, T, C, H, W), with `probability`, a dark band along one of its four edges: 1 to
    H // 8 pixels wide, one near-black grey (0 to 0.1, i.e. up to the limited-range video black of 16/255
    and a little above), the same in every frame. Real video often starts or ends in such a band
    (pillar- and letterboxing, the dark edge columns of digitized analog video); random crops of clips that
    have none never show the decoder a sharp dark edge at the frame border. `clips` may be rows first.. of a
    batch of `batch` (a data-parallel rank's): every clip's draws are made, only these clips get bands."""
    batch = clips.shape[0] if batch is None else batch
    picked = (torch.rand(batch, generator=generator) < probability).nonzero().flatten().tolist()
    if not picked:
        return clips
    clips = clips.clone()
    height = clips.shape[-2]
    for i in picked:
        edge = int(torch.randint(0, 4, (1,), generator=generator))
        width = int(torch.randint(1, max(1, height // 8) + 1, (1,), generator=generator))
        grey = float(torch.rand((), generator=generator)) * 0.1
        if not first <= i < first + clips.shape[0]:
            continue  # another rank's clip
        band = {0: (..., slice(0, width), slice(None)), 1: (..., slice(-width, None), slice(None)),
                2: (..., slice(None), slice(0, width)), 3: (..., slice(None), slice(-width, None))}[edge]
        clips[i - first][band] = grey
    return clips


class VideoTaskBase(Task):
    """Loss, model checks and evaluation shared by the video tasks. Subclasses provide the data and
    `eval_clips(model)`, and set `in_channels`, `train_shape` = (clip_len, height, width) and
    `eval_chunk`."""

    in_channels: int = 3
    train_shape: tuple[int, int, int]
    eval_chunk: int = 8
    burn_in: int = 0  # leading frames of every batch clip that only warm up the streaming state
    recon_loss: str = "mse"  # a name in RECON_LOSSES

    @staticmethod
    @torch.no_grad()
    def warm_state(model: VideoVAE, frames: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Encoder and decoder states after streaming `frames` (N, T, C, H, W) from the zero state, with
        sampled z as in training. No gradients: the state is context, not something to train through."""
        n, _, _, h, w = frames.shape
        s = model.spatial_factor
        encoder = model.init_encoder_state(n, h, w, frames.device, frames.dtype)
        decoder = model.init_decoder_state(n, h // s, w // s, frames.device, frames.dtype)
        if frames.shape[1] == 0:
            return encoder, decoder
        mu, logvar, *encoder = model.encode_step(frames, *encoder)
        _, *decoder = model.decode_step(reparameterize(mu, logvar), *decoder)
        return encoder, decoder

    def loss(self, model: nn.Module, batch: torch.Tensor):
        """Batch clips (N, burn_in + clip_len, C, H, W). With a burn-in, the first frames only set up the
        model's streaming state and the loss covers the rest: the model trains on what a long stream looks
        like (real past frames in its state), not only on clips that start from the zero state."""
        if self.burn_in:
            encoder, decoder = self.warm_state(model, batch[:, :self.burn_in])
            batch = batch[:, self.burn_in:]
            mu, logvar, *_ = model.encode_step(batch, *encoder)
            recon, *_ = model.decode_step(reparameterize(mu, logvar), *decoder)
        else:
            recon, mu, logvar = model(batch)  # samples z (reparameterized)
        # summed over the batch like the MNIST task; per clip after the trainer divides by the clips
        total, recon_term, kl_term = vae_loss(recon, batch, mu, logvar, RECON_LOSSES[self.recon_loss],
                                              self.train_config.kl_weight)
        # "mse": the mean squared error per pixel value (its mean over clips is the clips' mean MSE), the
        # number PSNR is made from; summed per clip so that the trainer's per-sample averaging keeps it.
        squared = recon_term if self.recon_loss == "mse" else mse_reconstruction(recon.detach(), batch)
        mse = squared / batch[0].numel()
        return total, {"recon": recon_term, "kl": kl_term, "mse": mse}, int(batch.shape[0])

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, VideoVAE):
            raise ConfigError(f"model kind {getattr(model, 'kind', type(model).__name__)!r} is not a video "
                              f"model; data kind {self.kind!r} needs frame, temporal or causal3d")
        if model.in_channels != self.in_channels:
            raise ConfigError(f"model kind {model.kind!r} takes {model.in_channels} channels, the "
                              f"{self.kind} data has {self.in_channels}")
        clip_len, height, width = self.train_shape
        s, t = model.spatial_factor, model.temporal_factor
        if height % s or width % s:
            raise ConfigError(f"training frames {width}x{height} must be multiples of the model's spatial "
                              f"factor {s} (data.crop)")
        if clip_len % t:
            raise ConfigError(f"data.clip_len {clip_len} must be a multiple of the model's temporal factor "
                              f"{t}")
        if self.burn_in % t:
            raise ConfigError(f"data.burn_in {self.burn_in} must be a multiple of the model's temporal "
                              f"factor {t}")

    def eval_clips(self, model: VideoVAE) -> list[EvalClip]:
        """The whole test clips `evaluate` streams through the model (never trained on)."""
        raise NotImplementedError

    def evaluate_extra(self, model: nn.Module, out_dir: Path, seed: int) -> tuple[dict[str, Any],
                                                                                  dict[str, Path]]:
        """Per-clip PSNR, SSIM and flicker, compression ratio and frames/s, with a side-by-side video and a
        strip of frames per clip (video_evaluation.evaluate_clips)."""
        return evaluate_clips(model, self.eval_clips(model), Path(out_dir), chunk=self.eval_chunk,
                              threads=self.train_config.threads)


@dataclass
class VideoTaskConfig(VideoDataConfig):
    # The clip data itself (train/valid/test videos, valid_share, short_side, crop, clip_len,
    # clips_per_epoch, max_frames) is vae_deploy.data.video.VideoDataConfig; these add how the task uses it.
    flip: bool = True  # mirror training clips left-right at random (two training videos: more variety)
    dark_borders: float = 0.0  # probability that a training clip gets a dark band along one edge
    # (random_dark_borders); 0 = off
    burn_in: int = 0  # frames before every training and validation clip that only warm up the model's
    # streaming state (no loss on them, no gradients through them): clips then start mid-stream, as in a
    # long video, instead of from the zero state. 0 = clips start from the zero state.
    valid_crop: int = 128  # validation and test-loss clips: center crops of this size of the validation
    # (test) videos
    eval_chunk: int = 8  # `evaluate` streams the test videos through the model this many frames at a time
    eval_max_frames: int = 0  # `evaluate` uses at most this many frames per test video; 0 = all

    def __post_init__(self):
        super().__post_init__()
        for name in ("valid_crop", "eval_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be 0 (none) or positive, got {self.burn_in}")
        if not 0 <= self.dark_borders <= 1:
            raise ValueError(f"dark_borders is a probability (0 to 1), got {self.dark_borders}")
        if self.eval_max_frames < 0:
            raise ValueError(f"eval_max_frames must be 0 (all) or positive, got {self.eval_max_frames}")
        if not self.test and not self.valid:
            raise ValueError("test must name the videos `evaluate` measures when valid names none (the "
                             "held-out ends of valid_share pick the best epoch; they judge nothing)")


def _fps(path: str) -> float:
    """The video's own frame rate for the side-by-side file (25 when the container does not say)."""
    with open_source(path) as source:
        return float(source.fps) if source.fps else 25.0


@register_task
class VideoClipsTask(VideoTaskBase):
    """Random crops x clip windows of the training videos; validation on their held-out ends and/or the
    validation videos, test loss and `evaluate` on the test videos (the validation videos when none)."""

    kind = "video"
    config_cls = VideoTaskConfig

    def __init__(self, config: VideoTaskConfig, train, device: torch.device):
        super().__init__(config, train, device)
        frames = config.burn_in + config.clip_len  # per batch clip
        self.train_set, self.valid_set = load_clip_sets(config, valid_clip_len=frames)
        # the test videos: the validation videos themselves when test is empty and nothing else validates
        same = not config.test and not config.valid_share
        self.test_set = self.valid_set if same else load_test_set(config)
        self.burn_in = config.burn_in
        self.train_set.check_fits(frames, config.crop)
        self.valid_set.check_fits(frames, config.valid_crop)
        self.test_set.check_fits(frames, config.valid_crop)
        self.still_set = None
        if config.stills:
            sides = [config.short_side, *config.extra_short_sides]  # the scales the videos come at
            self.still_set = StillSet.from_sources(config.stills, sides)
            self.still_set.check_fits(frames, config.crop, config.still_pan)
        self.train_shape = (config.clip_len, config.crop, config.crop)
        self.eval_chunk = config.eval_chunk
        # Fixed validation clips, kept on the device: every epoch is measured on exactly the same frames.
        self.valid_clips = self.valid_set.center_clips(frames, config.valid_crop).to(device)
        self.test_clips = self.valid_clips if same else None  # made when asked for (`evaluate`, not train)

    @property
    def num_train(self) -> int:
        return self.config.clips_per_epoch

    @classmethod
    def train_samples(cls, config: VideoTaskConfig) -> int:
        return config.clips_per_epoch  # the recipe defines the epoch: nothing to decode

    def train_batches(self, generator: torch.Generator,
                      rows: Callable[[int], range] | None = None) -> Iterator[torch.Tensor]:
        c, batch = self.config, self.train_config.batch_size
        for start in range(0, c.clips_per_epoch, batch):
            n = min(batch, c.clips_per_epoch - start)
            mine = rows(n) if rows is not None else range(n)  # a data-parallel rank cuts only its clips
            clips = self.random_clips(n, generator, mine)
            if c.flip:
                clips = random_flip(clips, generator, n, mine.start)
            if c.dark_borders:
                clips = random_dark_borders(clips, c.dark_borders, generator, n, mine.start)
            yield clips.to(self.device)

    def random_clips(self, n: int, generator: torch.Generator, rows: range | None = None) -> torch.Tensor:
        """n training clips: from the videos, and with stills a random share of them pans over a photo.
        With `rows`, only those of the n clips (all n are drawn)."""
        c = self.config
        frames = c.burn_in + c.clip_len
        rows = rows if rows is not None else range(n)
        if self.still_set is None:  # no draws beyond the videos': runs without stills keep their clips
            return self.train_set.random_clips(n, frames, c.crop, generator, rows)
        n_stills = int((torch.rand(n, generator=generator) < c.stills_share).sum())
        n_videos = n - n_stills  # clips 0..n_videos-1 come from the videos, the rest from the stills
        video_rows = range(rows.start, min(rows.stop, n_videos))
        still_rows = range(max(rows.start, n_videos) - n_videos, max(rows.stop, n_videos) - n_videos)
        parts = []
        if n_videos:
            parts.append(self.train_set.random_clips(n_videos, frames, c.crop, generator, video_rows))
        if n_stills:
            parts.append(self.still_set.random_clips(n_stills, frames, c.crop, c.still_pan, generator,
                                                     still_rows))
        return torch.cat(parts)

    def valid_batches(self) -> Iterator[torch.Tensor]:
        return self.in_order(self.valid_clips)

    def test_batches(self) -> Iterator[torch.Tensor]:
        # The test videos, never trained on; with no data.test they are the validation videos, which
        # also picked the best epoch.
        if self.test_clips is None:
            c = self.config
            self.test_clips = self.test_set.center_clips(c.burn_in + c.clip_len, c.valid_crop).to(self.device)
        return self.in_order(self.test_clips)

    def eval_clips(self, model: VideoVAE) -> list[EvalClip]:
        videos = self.test_set.full_videos(model.spatial_factor, self.config.eval_max_frames or None)
        return [EvalClip(Path(name).stem, video, _fps(name))
                for name, video in zip(self.test_set.names, videos, strict=True)]
