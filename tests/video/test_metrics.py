"""Video metrics against independent references: scikit-image's SSIM and a direct PSNR formula."""

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from vae_deploy.video.metrics import VideoMetrics, compression_ratio, psnr, ssim_frame


@pytest.fixture
def noisy_pair():
    rng = np.random.default_rng(0)
    source = rng.random((7, 40, 48, 3)).astype(np.float32)
    recon = np.clip(source + 0.05 * rng.standard_normal(source.shape), 0, 1).astype(np.float32)
    return source, recon


def test_ssim_matches_scikit_image(noisy_pair):
    source, recon = noisy_pair
    expected = structural_similarity(
        source[0], recon[0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, channel_axis=-1,
    )
    assert ssim_frame(source[0], recon[0]) == pytest.approx(expected, abs=1e-6)
    assert ssim_frame(source[0], source[0]) == pytest.approx(1.0)


def test_psnr_formula_and_uint8(noisy_pair):
    source, recon = noisy_pair
    mse = float(np.mean((source.astype(np.float64) - recon) ** 2))
    assert psnr(source, recon) == pytest.approx(10 * math.log10(1 / mse))
    assert psnr(source, source) == math.inf
    as_u8 = (source * 255).round().astype(np.uint8)
    assert psnr(as_u8, as_u8.astype(np.float32) / 255) == math.inf


def test_chunked_accumulation_equals_whole_video(noisy_pair):
    source, recon = noisy_pair
    whole = VideoMetrics()
    whole.update(source, recon)
    chunked = VideoMetrics()
    for start in range(0, 7, 3):
        chunked.update(source[start:start + 3], recon[start:start + 3])
    for key, value in whole.summary().items():
        assert chunked.summary()[key] == pytest.approx(value, rel=1e-9)
    assert whole.frames == 7


def test_flicker_is_zero_for_a_constant_offset_and_positive_for_noise(noisy_pair):
    source, recon = noisy_pair
    shifted = VideoMetrics()
    shifted.update(source, source + 0.1)  # same temporal change as the source
    assert shifted.flicker == pytest.approx(0.0, abs=1e-7)
    noisy = VideoMetrics()
    noisy.update(source, recon)
    expected = np.abs(np.diff(recon, axis=0) - np.diff(source, axis=0)).mean()
    assert noisy.flicker == pytest.approx(float(expected), rel=1e-5)


def test_compression_ratio_of_an_f8_c4_latent():
    # 128x128 RGB uint8 = 49152 bytes; a 16x16x4 fp16 latent = 2048 bytes.
    assert compression_ratio((128, 128, 3), 16 * 16 * 4) == pytest.approx(24.0)
