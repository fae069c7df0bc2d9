"""Parity floor of the streaming pipeline: every video design, exported as stateful streaming graphs and run
on ort-cpu in chunks of 1, 4 and 8 frames (state carried), matches the PyTorch full-sequence output to
max abs error <= 1e-4 in fp32, on real frames (carphone_pristine fitted as the pipeline fits them).

Export's own parity check (tests/export) streams random inputs in chunks of f and 3f; this covers the chunk
sizes the pipeline uses, on real video, and the pipeline's tail rule for a temporal factor f > 1 (a last
partial group padded by repeating the last frame, as models.streaming.StreamEncoder does in PyTorch).
"""

from __future__ import annotations

import numpy as np
import pytest

from vae_deploy.runtime import load_runner
from vae_deploy.video.fit import plan_fit
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source

FRAMES = 17  # not a multiple of any chunk or temporal factor: a short last chunk every time
CHUNKS = (1, 4, 8)
MAX_ABS = 1e-4
DESIGNS = {"frame": 1, "temporal": 1, "causal3d-t1": 1, "causal3d-t2": 2, "causal3d-t4": 4}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """17 real frames fitted to short side 32 (40x32): (1, T, 3, 32, 40) float32."""
    frames = open_source(sample_video_path("carphone_pristine")).read(max_frames=FRAMES)
    policy = plan_fit((176, 144), 32, 8, 3)
    return np.stack([policy.fit(f) for f in frames])[None]


def _pad_time(video: np.ndarray, f: int) -> np.ndarray:
    extra = (-video.shape[1]) % f
    return np.concatenate([video, np.repeat(video[:, -1:], extra, axis=1)], axis=1) if extra else video


@pytest.mark.parametrize("name", list(DESIGNS))
def test_streamed_graphs_match_the_pytorch_full_sequence(tiny_video_model, clip, name):
    f = DESIGNS[name]
    model_dir = tiny_video_model(name)
    video = _pad_time(clip, f)
    with load_runner(model_dir, "torch") as torch_ref:
        ref_mu, ref_logvar = torch_ref.encode(video)  # one call from the zero state: the full sequence
        ref_frames = torch_ref.decode(ref_mu)
    assert ref_mu.shape[1] == video.shape[1] // f and ref_frames.shape == video.shape
    checked = 0
    with load_runner(model_dir, "ort-cpu") as runner:
        for chunk in CHUNKS:
            if chunk % f == 0:  # encoder chunks hold whole temporal groups
                stream = runner.open_stream()
                parts = [stream.encode(video[:, i:i + chunk]) for i in range(0, video.shape[1], chunk)]
                mu = np.concatenate([p[0] for p in parts], axis=1)
                logvar = np.concatenate([p[1] for p in parts], axis=1)
                assert np.abs(mu - ref_mu).max() <= MAX_ABS, (name, chunk)
                assert np.abs(logvar - ref_logvar).max() <= MAX_ABS, (name, chunk)
                checked += 1
            stream = runner.open_stream()  # decoder chunks count latent frames: any size
            frames = np.concatenate([stream.decode(ref_mu[:, i:i + chunk])
                                     for i in range(0, ref_mu.shape[1], chunk)], axis=1)
            assert frames.shape == ref_frames.shape
            assert np.abs(frames - ref_frames).max() <= MAX_ABS, (name, chunk)
            checked += 1
    assert checked == sum(1 for c in CHUNKS if c % f == 0) + len(CHUNKS)
