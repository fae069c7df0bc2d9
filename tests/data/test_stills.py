"""Still photos as panning training clips (vae_deploy.data.stills), on the photos installed packages ship
and on images written here."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vae_deploy.config_io import from_dict
from vae_deploy.data.stills import SAMPLE_STILLS, StillSet, load_still, resolve_stills
from vae_deploy.data.video import VideoDataConfig
from vae_deploy.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def coded_photo(tmp_path_factory):
    """A lossless photo whose pixels say where they are: R = y, G = x, B = 77."""
    h, w = 120, 150
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([yy, xx, np.full((h, w), 77)], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("stills") / "coded.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


def test_every_sample_still_is_an_installed_photo_at_the_asked_size():
    paths = resolve_stills(SAMPLE_STILLS)
    assert len(paths) == len(SAMPLE_STILLS) == 10
    for path in paths:
        image = load_still(path, 128)
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) == 128


def test_still_clips_pan_across_the_photo_at_a_constant_whole_pixel_speed(coded_photo):
    stills = StillSet.from_sources([str(coded_photo)], [0])  # native size
    clips = stills.random_clips(48, 4, 32, 3, torch.Generator().manual_seed(0))
    assert clips.shape == (48, 4, 3, 32, 32) and clips.dtype == torch.float32
    photo = load_still(coded_photo, 0)
    velocities = set()
    for clip in clips:
        # each frame's top-left pixel names where its window lies: (y, x) = (R, G)
        corners = [(round(float(f[0, 0, 0]) * 255), round(float(f[1, 0, 0]) * 255)) for f in clip]
        vy, vx = corners[1][0] - corners[0][0], corners[1][1] - corners[0][1]
        assert abs(vy) <= 3 and abs(vx) <= 3
        velocities.add((vy, vx))
        for t, (y, x) in enumerate(corners):
            assert (y, x) == (corners[0][0] + t * vy, corners[0][1] + t * vx)
            assert torch.equal((clip[t] * 255).round().to(torch.uint8), photo[:, y:y + 32, x:x + 32])
    assert len(velocities) > 10  # pans in many directions, standing still among them at most by chance


def test_stills_come_at_every_scale_and_refuse_a_photo_too_small_for_the_pan(coded_photo):
    stills = StillSet.from_sources([str(coded_photo)], [60, 90])
    assert [min(i.shape[1:]) for i in stills.images] == [60, 90] and stills.names[0] == "coded.png@60"
    with pytest.raises(ConfigError, match=r"coded.png@60 is 75x60, smaller than a 56x56 crop panning 6 px"):
        stills.random_clips(1, 4, 56, 2, torch.Generator())
    assert stills.random_clips(2, 4, 56, 1, torch.Generator()).shape == (2, 4, 3, 56, 56)  # 56 + 3 fits


def test_still_sources_are_names_files_or_folders_and_bad_ones_are_named(coded_photo, tmp_path):
    assert resolve_stills([str(coded_photo.parent)]) == [coded_photo]
    with pytest.raises(DataError, match="no such still image, folder or sample still: nowhere.png"):
        resolve_stills(["nowhere.png"])
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        resolve_stills([str(tmp_path)])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png is not an image OpenCV can read"):
        load_still(tmp_path / "broken.png", 0)


def test_stills_and_their_share_go_together():
    with pytest.raises(ConfigError, match="stills and stills_share go together"):
        from_dict(VideoDataConfig, {"stills": ["astronaut"]})
    with pytest.raises(ConfigError, match="stills and stills_share go together"):
        from_dict(VideoDataConfig, {"stills_share": 0.5})
    with pytest.raises(ConfigError, match="stills_share is a share"):
        from_dict(VideoDataConfig, {"stills": ["astronaut"], "stills_share": 1.5})
    assert from_dict(VideoDataConfig, {"stills": ["astronaut"], "stills_share": 0.5}).still_pan == 4
