"""FrameStream: the model inside a caller's own capture loop, and the README's example of it, run as is."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_deploy.runtime.latents import LatentReader
from vae_deploy.video.default_model import DEFAULT_MODEL_DIR
from vae_deploy.video.frames import FrameStream
from vae_deploy.video.jobs import encode_job
from vae_deploy.video.model_open import ModelChoice
from vae_deploy.video.pipeline import StreamOptions
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source

README = Path(__file__).parents[2] / "README.md"


@pytest.mark.parametrize("name", ["frame", "causal3d-t2"])
def test_pushed_frames_give_what_encode_stores(tiny_video_model, tmp_path, name):
    """Chunk for chunk, the latents of a push loop equal the .vaelat `vae-deploy encode` writes; the last,
    partial chunk comes out of flush(); the frames come back at the pushed size."""
    model, clip = tiny_video_model(name), sample_video_path("carphone_pristine")
    frames = open_source(clip).read(max_frames=21)
    encode_job(clip, tmp_path / "clip.vaelat", options=StreamOptions(chunk=4, max_frames=21, measure=False),
               model=ModelChoice(model))
    stored = np.asarray(LatentReader(tmp_path / "clip.vaelat").latents)
    pushed, flushed = [], []
    # The same runner settings as the jobs (threads change float summation order, hence fp16 rounding).
    with FrameStream.open(model, frame_size=(176, 144), chunk=4) as stream:
        for frame in frames:
            pushed += stream.push(frame)
        flushed = stream.flush()
    assert len(pushed) == 5 and len(flushed) == 1
    chunks = pushed + flushed
    np.testing.assert_array_equal(np.concatenate([c.latents for c in chunks]), stored)
    assert [c.frames.shape for c in chunks] == [(4, 144, 176, 3)] * 5 + [(1, 144, 176, 3)]
    assert all(c.frames.dtype == np.uint8 for c in chunks)
    assert stream.flush() == []


def test_a_frame_of_another_size_is_refused(tiny_video_model):
    from vae_deploy.errors import DataError

    with FrameStream.open(tiny_video_model("frame"), frame_size=(64, 48)) as stream:
        with pytest.raises(DataError, match="frame size changed"):
            stream.push(np.zeros((32, 32, 3), np.uint8))


def test_the_readme_example_runs(tmp_path):
    """The README's "embed it in your own pipeline" example, run as a user would: a clip.mp4 and a model
    folder (here the packaged default model) in the working directory."""
    text = README.read_text()
    section = text[text.index("## Embed it in your own pipeline"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copyfile(sample_video_path("carphone_pristine"), tmp_path / "clip.mp4")
    (tmp_path / "model").symlink_to(DEFAULT_MODEL_DIR)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 15  # 120 frames in chunks of 8
    assert lines[0] == "latents (8, 4, 16, 20) float16, frames (8, 144, 176, 3) uint8"


def test_latents_that_overflow_fp16_are_refused_not_handed_back_as_inf(tiny_kl_model, tmp_path):
    """A normalization scaling by 1e6 makes the fp16 latents inf; push() raises instead of returning them."""
    import json

    from vae_deploy.errors import DataError

    model = tmp_path / "model"
    shutil.copytree(tiny_kl_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    scale = manifest["preprocessing"]["latent_normalization"]["scale"]
    manifest["preprocessing"]["latent_normalization"]["scale"] = [1e6] * len(scale)
    (model / "manifest.json").write_text(json.dumps(manifest))
    with FrameStream.open(model, frame_size=(64, 48), chunk=1) as stream:
        with pytest.raises(DataError, match=r"latents overflow fp16: the normalized latents reach \S+, beyond "
                                            r"float16's 65504"):
            stream.push(np.full((48, 64, 3), 128, np.uint8))
