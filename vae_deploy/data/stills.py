"""Still photos as extra training scenes: each photo becomes clips of a camera panning across it.

Why: the sample videos are two scenes (a street, an animation); a video VAE trained on their crops sees
few kinds of texture, faces or colour. Photos that installed packages already ship add many scenes at no
download. A clip of a still is `clip_len` crops of one photo whose window moves by a fixed whole number of
pixels per frame (a camera pan over a static scene), so the temporal designs still see real motion.

Sources (each entry of `VideoDataConfig.stills`): a sample still name (`SAMPLE_STILLS`: photos shipped by
scikit-image and matplotlib, located without importing either), an image file, or a folder of images
(each image one still). Greyscale photos become three equal channels.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from vae_deploy.data.video import resize_short_side, resolve_entries
from vae_deploy.errors import ConfigError, DataError
from vae_deploy.video.sources import IMAGE_SUFFIXES

# name -> (package, file inside it). Natural photos and textures that these packages install with
# themselves (not the ones scikit-image fetches on demand). scikit-image's: public domain or CC0, as the
# docstrings of skimage.data's functions say; matplotlib's: the portrait its own examples use.
SAMPLE_STILLS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
INSTALL_HINT = "pip install scikit-image matplotlib (the train extra)"


def sample_still_path(name: str) -> Path:
    package, relative = SAMPLE_STILLS[name]
    # find_spec locates the package without importing it (both import slowly and need nothing else here)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"sample still {name!r} comes from {package}, which is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"sample still {name!r} is missing from the {package} install ({path})")
    return path


def _image_files(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DataError(f"{folder} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    return found


def resolve_stills(entries: Iterable[str]) -> list[Path]:
    """Sample still names, image files and folders of images (each image one still) -> image paths."""
    return resolve_entries(entries, SAMPLE_STILLS, sample_still_path, _image_files,
                           "still image, folder or sample still")


def load_still(path: Path, short_side: int) -> torch.Tensor:
    """uint8 (3, H, W) RGB, scaled so that its short side is `short_side` (0 = native size)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # greyscale -> 3 channels, alpha dropped
    if image is None:
        raise DataError(f"{path} is not an image OpenCV can read")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if short_side:
        image = resize_short_side(image, short_side)  # as the videos are resized: the same look
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


class StillSet:
    """Photos in memory, each uint8 (3, H, W), at one or more scales; hands out panning clips NTCHW."""

    def __init__(self, images: Sequence[torch.Tensor], names: Sequence[str]):
        if not images:
            raise DataError("no still images to take clips from")
        self.images, self.names = list(images), list(names)

    @classmethod
    def from_sources(cls, entries: Iterable[str], short_sides: Sequence[int]) -> StillSet:
        paths = resolve_stills(entries)
        images, names = [], []
        for side in short_sides:
            for path in paths:
                images.append(load_still(path, side))
                names.append(f"{path.name}@{side}")
        return cls(images, names)

    def check_fits(self, clip_len: int, crop: int, max_pan: int) -> None:
        """Refuse a photo too small for a crop panning at the fastest speed for the whole clip."""
        travel = max_pan * (clip_len - 1)
        for image, name in zip(self.images, self.names, strict=True):
            _, h, w = image.shape
            if h < crop + travel or w < crop + travel:
                raise ConfigError(f"still {name} is {w}x{h}, smaller than a {crop}x{crop} crop panning "
                                  f"{travel} px (lower crop or still_pan)")

    def random_clips(self, batch: int, clip_len: int, crop: int, max_pan: int,
                     generator: torch.Generator, rows: range | None = None) -> torch.Tensor:
        """`batch` clips (B, T, 3, crop, crop) in [0, 1]: a random photo, a random pan velocity (vx, vy),
        each a whole number of pixels per frame in [-max_pan, max_pan], and a random start such that the
        window stays inside the photo for all T frames. With `rows` (a data-parallel rank's part of the
        batch) only those clips are cut; every clip's draws are made."""
        self.check_fits(clip_len, crop, max_pan)
        rows = rows if rows is not None else range(batch)
        clips = []
        for row in range(batch):
            image = self.images[int(torch.randint(0, len(self.images), (1,), generator=generator))]
            _, h, w = image.shape
            vy, vx = (int(v) for v in torch.randint(-max_pan, max_pan + 1, (2,), generator=generator))
            travel_y, travel_x = vy * (clip_len - 1), vx * (clip_len - 1)
            # the window's start: anywhere from which the whole path fits inside the photo
            y0 = int(torch.randint(max(0, -travel_y), h - crop - max(0, travel_y) + 1, (1,),
                                   generator=generator))
            x0 = int(torch.randint(max(0, -travel_x), w - crop - max(0, travel_x) + 1, (1,),
                                   generator=generator))
            if row not in rows:
                continue  # another rank's clip
            clips.append(torch.stack([image[:, y0 + t * vy:y0 + t * vy + crop, x0 + t * vx:x0 + t * vx + crop]
                                      for t in range(clip_len)]))
        if not clips:
            return torch.empty((0, clip_len, self.images[0].shape[0], crop, crop))
        return torch.stack(clips).float().div_(255.0)
