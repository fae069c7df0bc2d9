"""Video quality metrics on numpy arrays (no torch): PSNR, SSIM, temporal flicker, compression ratio.

Frames are float32 in [0, 1] or uint8, layout (T, H, W, C) (what OpenCV sources yield after RGB conversion).
`VideoMetrics` accumulates chunk by chunk so streaming runs measure whole videos in constant memory (plus
three numbers per frame, kept for the per-frame plots of the report page, video/report.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np


def _as_float(frames: np.ndarray) -> np.ndarray:
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255.0
    return frames.astype(np.float32, copy=False)


def _check_pair(source: np.ndarray, recon: np.ndarray) -> None:
    if source.shape != recon.shape:
        raise ValueError(f"source {source.shape} and reconstruction {recon.shape} differ in shape")
    if source.ndim != 4:
        raise ValueError(f"expected frames (T, H, W, C), got {source.shape}")


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; identical inputs give +inf."""
    return math.inf if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def psnr(source: np.ndarray, recon: np.ndarray) -> float:
    """PSNR over all pixels of two arrays of the same shape, values in [0, 1] (or uint8)."""
    a, b = _as_float(source), _as_float(recon)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b) ** 2)))


def ssim_frame(source: np.ndarray, recon: np.ndarray) -> float:
    """Mean SSIM of one (H, W, C) frame pair, averaged over channels.

    Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to structural
    similarity", IEEE TIP 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1.
    """
    a, b = _as_float(source).astype(np.float64), _as_float(recon).astype(np.float64)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    # Average over the interior only, where the window lies wholly inside the image (as scikit-image does).
    pad = 5 if min(a.shape[:2]) > 11 else 0
    interior = ssim_map[pad:ssim_map.shape[0] - pad, pad:ssim_map.shape[1] - pad]
    return float(interior.mean())


def compression_ratio(frame_hwc: tuple[int, int, int], latent_per_frame: int) -> float:
    """Raw uint8 RGB bytes of one frame over the fp16 bytes of its latent (latent elements per frame)."""
    h, w, c = frame_hwc
    return (h * w * c) / (2.0 * latent_per_frame)


@dataclass
class VideoMetrics:
    """Accumulates PSNR, SSIM and flicker over a video fed in chunks of (T, H, W, C) frames.

    Flicker: mean absolute difference between the reconstruction's frame-to-frame change and the source's,
    |(r_t - r_{t-1}) - (s_t - s_{t-1})| averaged over pixels and frame pairs; 0 means the reconstruction
    changes over time exactly as the source does.

    Per frame (`per_frame()`): PSNR and SSIM of each frame, and the flicker of each frame against the one
    before it (None for the first frame, which has no predecessor); the whole-video numbers above are
    unchanged by them (PSNR over all pixels is not the mean of per-frame PSNRs).
    """

    frames: int = 0
    _sq_err: float = 0.0
    _pixels: int = 0
    _ssim_sum: float = 0.0
    _flicker_sum: float = 0.0
    _flicker_pairs: int = 0
    _prev: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    frame_psnr: list[float] = field(default_factory=list, repr=False)
    frame_ssim: list[float] = field(default_factory=list, repr=False)
    frame_flicker: list[float | None] = field(default_factory=list, repr=False)

    def update(self, source: np.ndarray, recon: np.ndarray) -> None:
        _check_pair(source, recon)
        s, r = _as_float(source), _as_float(recon)
        diff = s.astype(np.float64) - r
        self._sq_err += float(np.sum(diff * diff))
        self._pixels += diff.size
        # Frame by frame, so a frame's number does not depend on the chunk it came in (summation order).
        self.frame_psnr.extend(psnr_from_mse(float(np.mean(d * d))) for d in diff)
        ssims = [ssim_frame(s[t], r[t]) for t in range(s.shape[0])]
        self.frame_ssim.extend(ssims)
        self._ssim_sum += sum(ssims)
        if self._prev is None:
            self.frame_flicker.append(None)  # the first frame has no change to compare
        else:
            s = np.concatenate([self._prev[0], s])
            r = np.concatenate([self._prev[1], r])
        if s.shape[0] > 1:
            change = np.diff(r.astype(np.float64), axis=0) - np.diff(s.astype(np.float64), axis=0)
            pairs = np.abs(change).mean(axis=(1, 2, 3))
            self.frame_flicker.extend(float(v) for v in pairs)
            self._flicker_sum += float(pairs.sum())
            self._flicker_pairs += s.shape[0] - 1
        self._prev = (s[-1:], r[-1:])
        self.frames += source.shape[0]

    @property
    def psnr(self) -> float:
        return psnr_from_mse(self._sq_err / self._pixels) if self._pixels else math.nan

    @property
    def ssim(self) -> float:
        return self._ssim_sum / self.frames if self.frames else math.nan

    @property
    def flicker(self) -> float:
        return self._flicker_sum / self._flicker_pairs if self._flicker_pairs else 0.0

    def summary(self) -> dict[str, float]:
        return {"frames": self.frames, "psnr": self.psnr, "ssim": self.ssim, "flicker": self.flicker}

    def per_frame(self) -> dict[str, list]:
        """{"psnr": [...], "ssim": [...], "flicker": [...]}, one entry per frame in stream order."""
        return {"psnr": list(self.frame_psnr), "ssim": list(self.frame_ssim),
                "flicker": list(self.frame_flicker)}
