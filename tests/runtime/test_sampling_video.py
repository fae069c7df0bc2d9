"""`vae-deploy sample` for frame VAEs (video models without streaming state): n latent frames drawn N(0, I) in
the model's normalized latent space, decoded by the runner and written as one grid; causal video models
(state carried from frame to frame) refused in one line. The image-model (MLP) path is unchanged."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from cli_support import assert_one_line_error, invoke_main

from vae_deploy.cli.sample import MAX_SAMPLE_SIDE
from vae_deploy.errors import ConfigError
from vae_deploy.runtime.latent_space import LatentNormalization
from vae_deploy.runtime.manifest import read_manifest
from vae_deploy.runtime.registry import load_runner
from vae_deploy.runtime.sampling import SAMPLE_DECODE_CHUNK, sample_prior
from vae_deploy.video.fit import DEFAULT_SHORT_SIDE, MAX_MODEL_SIDE, plan_fit

PAD = 2  # image_grid's padding between and around tiles


@pytest.fixture
def vd(capsys, monkeypatch):
    """`vae-deploy` through main() in this process."""
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


def grid_side(columns: int, tile: int) -> int:
    return PAD + columns * (tile + PAD)


def image_size(path) -> tuple[int, int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image.shape[1], image.shape[0], 1 if image.ndim == 2 else image.shape[2]


@pytest.mark.parametrize("name, channels", [("frame", 3), ("frame-gray", 1)])
def test_sample_a_frame_model_writes_a_grid_of_n_frames_reproducibly(vd, tiny_video_model, tmp_path, name,
                                                                     channels):
    model = tiny_video_model(name)  # its manifest records the working short side 32
    assert read_manifest(model).preprocessing["short_side"] == 32
    first = vd("sample", model, "-n", "4", "--out", tmp_path / "g.png", "--seed", "1")
    assert first.returncode == 0, first.stderr
    assert "4 samples, 70x70 px" in first.stdout
    assert image_size(tmp_path / "g.png") == (grid_side(2, 32), grid_side(2, 32), channels)  # 2x2 of 32 px
    assert vd("sample", model, "-n", "4", "--out", tmp_path / "again.png", "--seed", "1").returncode == 0
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "g.png").read_bytes()
    assert vd("sample", model, "-n", "4", "--out", tmp_path / "other.png", "--seed", "2").returncode == 0
    assert (tmp_path / "other.png").read_bytes() != (tmp_path / "g.png").read_bytes()


def test_sample_a_diffusers_kl_model_at_the_default_and_a_given_size(vd, tiny_kl_model, tmp_path):
    assert "short_side" not in read_manifest(tiny_kl_model).preprocessing  # so the default side is used
    made = vd("sample", tiny_kl_model, "-n", "4", "--out", tmp_path / "g.png", "--seed", "1")
    assert made.returncode == 0, made.stderr
    tile = DEFAULT_SHORT_SIDE
    assert image_size(tmp_path / "g.png") == (grid_side(2, tile), grid_side(2, tile), 3)
    assert vd("sample", tiny_kl_model, "-n", "4", "--out", tmp_path / "again.png", "--seed", "1"
              ).returncode == 0
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "g.png").read_bytes()
    # --size is snapped to the model's spatial multiple (2 here) as `run` fits frames; 5 frames: 3 columns
    tile = plan_fit((33, 33), 33, 2, 3, "snap").model_size[0]
    assert tile == 32  # 16.5 multiples, rounded half to even
    sized = vd("sample", tiny_kl_model, "-n", "5", "--size", "33", "--out", tmp_path / "s.png", "--seed", "1")
    assert sized.returncode == 0, sized.stderr
    assert image_size(tmp_path / "s.png") == (grid_side(3, tile), grid_side(2, tile), 3)


def test_draws_are_unit_normal_in_the_normalized_space_then_denormalized(tiny_kl_model):
    """The decoder gets N(0, I) / scale + shift (scale 0.18215 here): draws in the diffusion model's space,
    where the scaling factor gives latents unit variance, not N(0, I) raw latents."""
    manifest = read_manifest(tiny_kl_model)
    norm = LatentNormalization.from_preprocessing(manifest.preprocessing, 4)
    assert norm is not None and np.allclose(norm.scale, 0.18215) and not norm.shift.any()
    with load_runner(tiny_kl_model, "ort-cpu") as runner:
        frames = sample_prior(runner, 3, seed=5, short_side=16)
        eps = np.random.default_rng(5).standard_normal((1, 3, 4, 8, 8)).astype(np.float32)
        expected = runner.decode(eps / np.float32(0.18215))[0]
        raw = runner.decode(eps)[0]
    assert frames.shape == (3, 3, 16, 16)
    assert np.array_equal(frames, expected)
    assert not np.allclose(frames, raw)  # drawn raw it would be another picture


def test_more_frames_than_a_decoder_call_match_one_whole_clip_call(tiny_video_model):
    """Frame VAEs decode every frame on its own, so sampling decodes in pieces of SAMPLE_DECODE_CHUNK latent
    frames (bounded memory); the frames are those of one call over the whole clip."""
    n = SAMPLE_DECODE_CHUNK + 3
    with load_runner(tiny_video_model("frame"), "ort-cpu") as runner:
        frames = sample_prior(runner, n, seed=0, short_side=24)
        z = np.random.default_rng(0).standard_normal((1, n, 4, 3, 3)).astype(np.float32)
        whole = runner.decode(z)[0]
    assert frames.shape == whole.shape == (n, 3, 24, 24)
    assert np.array_equal(frames, whole)  # every frame's computation is the same, whatever the call holds


@pytest.mark.parametrize("name", ["causal3d-t1", "temporal"])
def test_models_with_streaming_state_are_refused_in_one_line(vd, tiny_video_model, tmp_path, name):
    result = vd("sample", tiny_video_model(name), "-n", "4", "--out", tmp_path / "g.png", "--seed", "1")
    assert_one_line_error(result, "sampling needs a model without streaming state;", 2)
    assert list(tmp_path.iterdir()) == []


def test_size_is_refused_for_image_models_and_their_path_is_unchanged(vd, mlp_model_dir, tmp_path):
    result = vd("sample", mlp_model_dir, "--size", "32", "--out", tmp_path / "g.png")
    assert_one_line_error(result, "--size is for video models", 2)
    assert list(tmp_path.iterdir()) == []
    with load_runner(mlp_model_dir, "ort-cpu") as runner:
        latent = runner.graph("decoder").inputs[0].shape[1]
        z = np.random.default_rng(3).standard_normal((10, latent)).astype(np.float32)
        assert np.array_equal(sample_prior(runner, 10, seed=3), runner.decode(z))
        with pytest.raises(ConfigError, match="--size is for video models"):
            sample_prior(runner, 10, seed=3, short_side=32)


def test_a_grid_too_large_for_memory_is_refused_before_any_work(vd, tiny_video_model, tmp_path):
    result = vd("sample", tiny_video_model("frame"), "-n", "10000", "--size", "4096", "--out",
                tmp_path / "g.png")
    assert_one_line_error(result, "over the limit of 268: ask for fewer samples (-n) or a smaller --size", 2)
    assert list(tmp_path.iterdir()) == []


def test_the_size_option_allows_what_run_feeds_a_model():
    assert MAX_SAMPLE_SIDE == MAX_MODEL_SIDE
