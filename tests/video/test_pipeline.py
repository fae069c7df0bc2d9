"""The streaming pipeline on real video (carphone_pristine decoded by OpenCV) through exported tiny models on
ONNX Runtime: fitting, run = encode + decode, the temporal factor's padding, truncated sources, bounded
memory, and the stages' threading."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from vae_deploy.errors import ConfigError, DataError
from vae_deploy.runtime import load_runner
from vae_deploy.runtime.latents import LatentReader
from vae_deploy.video.fit import plan_fit
from vae_deploy.video.metrics import VideoMetrics, psnr
from vae_deploy.video.pipeline import (
    StreamOptions,
    VideoOutputs,
    decode_latents,
    encode_video,
    run_video,
)
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import FrameSource, open_source
from vae_deploy.video.stages import run_stages


@pytest.fixture(scope="module")
def carphone():
    return sample_video_path("carphone_pristine")


@pytest.fixture(scope="module")
def carphone_frames(carphone):
    return open_source(carphone).read(max_frames=24)


def read_video(path) -> np.ndarray:
    """Every frame of a video file, RGB uint8 (T, H, W, 3), decoded by OpenCV."""
    with open_source(path) as source:
        return source.read()


# ---------------------------------------------------------------- fitting


def test_fit_sizes_snap_and_pad():
    snap = plan_fit((176, 144), 128, 8, 3, "snap")  # 176x144 scaled to 156.4x128: 160x128, no padding
    assert snap.content_size == snap.model_size == (160, 128) and snap.padding == (0, 0)
    pad = plan_fit((176, 144), 128, 8, 3, "pad")  # aspect kept: 156x128, padded right to 160
    assert pad.content_size == (156, 128) and pad.model_size == (160, 128) and pad.padding == (4, 0)
    odd = plan_fit((33, 17), 0, 8, 3, "pad")  # native size: only padding
    assert odd.content_size == (33, 17) and odd.model_size == (40, 24)
    tiny = plan_fit((5, 3), 0, 8, 3, "snap")  # never below one multiple
    assert tiny.model_size == (8, 8)
    with pytest.raises(ConfigError, match="unknown fit mode 'crop'"):
        plan_fit((176, 144), 128, 8, 3, "crop")
    with pytest.raises(ConfigError, match="--size must be 0"):
        plan_fit((176, 144), -1, 8, 3)


@pytest.mark.parametrize("mode", ["snap", "pad"])
def test_fit_is_undone_on_output(carphone_frames, mode):
    """fit then unfit without a model gives the source back up to resampling: the policy is undone."""
    policy = plan_fit((176, 144), 128, 8, 3, mode)
    fitted = np.stack([policy.fit(f) for f in carphone_frames[:6]])
    assert fitted.shape == (6, 3, 128, 160) and fitted.dtype == np.float32
    assert 0.0 <= fitted.min() and fitted.max() <= 1.0
    if mode == "pad":  # the padding repeats the last column
        np.testing.assert_array_equal(fitted[..., 156:], np.repeat(fitted[..., 155:156], 4, axis=-1))
    back = np.stack([policy.unfit(f) for f in fitted])
    assert back.shape == carphone_frames[:6].shape and back.dtype == np.uint8
    assert psnr(carphone_frames[:6], back) > 30.0
    # The working frame is the model input without padding.
    np.testing.assert_array_equal(policy.crop(fitted[0]), fitted[0][:, :, :policy.content_size[0]]
                                  .transpose(1, 2, 0))


def test_fit_for_a_gray_model_uses_luma_and_writes_rgb(carphone_frames):
    policy = plan_fit((176, 144), 64, 8, 1)
    fitted = policy.fit(carphone_frames[0])
    assert fitted.shape == (1, 64, 80)
    luma = cv2.cvtColor(cv2.resize(carphone_frames[0], (80, 64), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)
    np.testing.assert_allclose(fitted[0], luma / 255.0, atol=1e-6)
    out = policy.unfit(fitted)
    assert out.shape == (144, 176, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


# ---------------------------------------------------------------- run, encode, decode


def test_run_writes_every_output_and_measures_what_it_wrote(tiny_video_model, carphone, tmp_path):
    outputs = VideoOutputs(tmp_path / "recon.mkv", tmp_path / "both.mkv", tmp_path / "clip.vaelat")
    with load_runner(tiny_video_model("frame"), "ort-cpu") as runner, open_source(carphone) as source:
        seen = []
        report = run_video(runner, source, StreamOptions(chunk=4, max_frames=18), outputs, seen.append)
    assert report.frames == 18 and seen[-1] == 18 and seen == sorted(seen)
    assert report.working_size == [40, 32] and report.model_size == [40, 32]  # manifest short side 32, snap
    assert report.compression_ratio == pytest.approx(24.0)  # 8x8 pixels x 3 bytes over 4 fp16 values
    assert report.chunk_latency_ms["chunks"] == 5 and report.chunk_latency_ms["p95"] >= \
        report.chunk_latency_ms["p50"] > 0
    assert report.backend == "ort-cpu" and len(report.model_fingerprint) == 64 and not report.truncated
    source_frames = open_source(carphone).read(max_frames=18)
    recon = read_video(outputs.video)  # FFV1: lossless, so these are exactly the frames the pipeline made
    assert recon.shape == source_frames.shape
    assert report.psnr_source == pytest.approx(psnr(source_frames, recon), abs=1e-6)
    both = read_video(outputs.side_by_side)
    np.testing.assert_array_equal(both[:, :, :176], source_frames)
    np.testing.assert_array_equal(both[:, :, 176:], recon)
    # Working-resolution metrics, recomputed from the latent file through the model directly.
    reader = LatentReader(outputs.latents)
    assert reader.header.frame_count == 18 and reader.header.latent_frames == 18
    assert reader.header.chunk == 4 and reader.header.model_fingerprint == report.model_fingerprint
    with load_runner(tiny_video_model("frame"), "ort-cpu") as runner:
        decoded = runner.decode(np.asarray(reader.latents, np.float32)[None])[0]
    policy = plan_fit((176, 144), 32, 8, 3)
    fitted = np.stack([policy.fit(f) for f in source_frames])
    metrics = VideoMetrics()
    metrics.update(fitted.transpose(0, 2, 3, 1), decoded.transpose(0, 2, 3, 1))
    assert report.psnr == pytest.approx(metrics.psnr, abs=1e-4)
    assert report.ssim == pytest.approx(metrics.ssim, abs=1e-4)
    assert report.flicker == pytest.approx(metrics.flicker, abs=1e-5)


@pytest.mark.parametrize("name,frames,chunk", [("frame", 13, 4), ("causal3d-t2", 13, 4),
                                               ("causal3d-t4", 10, 8)])
def test_encode_then_decode_gives_exactly_the_frames_of_run(tiny_video_model, carphone, tmp_path, name,
                                                            frames, chunk):
    """Same fp16 latents, same chunks: bit-identical frames. With a temporal factor f the last group is
    padded by repeating the last frame and the extra decoded frames dropped: as many frames out as in."""
    model = tiny_video_model(name)
    options = StreamOptions(chunk=chunk, max_frames=frames)
    with load_runner(model, "ort-cpu") as runner:
        run_report = run_video(runner, open_source(carphone), options,
                               VideoOutputs(video=tmp_path / "run.mkv", latents=tmp_path / "run.vaelat"))
        encode_report = encode_video(runner, open_source(carphone), tmp_path / "enc.vaelat", options)
    with load_runner(model, "ort-cpu") as runner:  # a fresh session, as a separate `decode` would be
        decode_report = decode_latents(runner, tmp_path / "enc.vaelat",
                                       VideoOutputs(video=tmp_path / "dec.mkv"))
    assert run_report.frames == encode_report.frames == decode_report.frames == frames
    assert (tmp_path / "run.vaelat").read_bytes() == (tmp_path / "enc.vaelat").read_bytes()
    ran, decoded = read_video(tmp_path / "run.mkv"), read_video(tmp_path / "dec.mkv")
    assert ran.shape == decoded.shape == (frames, 144, 176, 3)
    np.testing.assert_array_equal(ran, decoded)
    header = LatentReader(tmp_path / "enc.vaelat").header
    f = {"frame": 1, "causal3d-t2": 2, "causal3d-t4": 4}[name]
    assert header.frame_count == frames and header.latent_frames == -(-frames // f)
    assert header.fit["mode"] == "snap" and header.source_size == [176, 144]


def test_temporal_padding_repeats_the_last_frame(tiny_video_model, carphone_frames):
    """The last partial group of a factor-2 model encodes like the same frames with the last one repeated."""
    from vae_deploy.video.latent_codec import LatentCodec

    policy = plan_fit((176, 144), 32, 8, 3)
    fitted = np.stack([policy.fit(f) for f in carphone_frames[:5]])
    with load_runner(tiny_video_model("causal3d-t2"), "ort-cpu") as runner:
        latent_codec = LatentCodec(runner)
        odd = np.concatenate([latent_codec.encode(fitted[:4]), latent_codec.encode(fitted[4:])])
        with pytest.raises(Exception, match="last \\(partial\\) group was already encoded"):
            latent_codec.encode(fitted[:2])
        padded = np.concatenate([fitted, fitted[4:5]])
        # a stream of its own, so that both encodes make the same calls (a call's length can change the
        # float summation order, and runner.encode makes one call of the whole clip)
        mu = runner.open_stream().step("encoder", padded[None])["mu"]
    assert odd.shape == (3, 4, 4, 5)
    np.testing.assert_array_equal(odd, mu[0].astype(np.float16))


def test_chunk_must_be_a_multiple_of_the_temporal_factor(tiny_video_model, carphone):
    with load_runner(tiny_video_model("causal3d-t2"), "ort-cpu") as runner:
        with pytest.raises(ConfigError, match=r"--chunk 5 is not a multiple of the model's temporal factor 2"
                                              r".*use 4 or 6"):
            run_video(runner, open_source(carphone), StreamOptions(chunk=5))


def test_a_latent_file_of_another_model_is_refused(tiny_video_model, carphone, tmp_path):
    with load_runner(tiny_video_model("frame"), "ort-cpu") as runner:
        encode_video(runner, open_source(carphone), tmp_path / "a.vaelat", StreamOptions(max_frames=4))
    with load_runner(tiny_video_model("causal3d-t1"), "ort-cpu") as other:
        with pytest.raises(DataError, match=r"a.vaelat was encoded by another model \(frame, fingerprint"):
            decode_latents(other, tmp_path / "a.vaelat", VideoOutputs(video=tmp_path / "out.mkv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.vaelat"]


def test_a_truncated_video_is_processed_as_far_as_it_decodes(tiny_video_model, carphone_frames, tmp_path):
    full = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 30, (176, 144))
    for frame in carphone_frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    with load_runner(tiny_video_model("frame"), "ort-cpu") as runner, open_source(cut) as source:
        report = run_video(runner, source, StreamOptions(), VideoOutputs(video=tmp_path / "out.mkv"))
    assert report.expected_frames == 24 and 0 < report.frames < 24 and report.truncated
    assert read_video(tmp_path / "out.mkv").shape[0] == report.frames


class LoopedClip(FrameSource):
    """A real clip played `times` times in a row: a long video without a long file."""

    def __init__(self, frames: np.ndarray, times: int):
        self.frames, self.times = frames, times
        self.description, self.fps = "looped clip", 30.0
        self.frame_count = len(frames) * times
        self.size = (frames.shape[2], frames.shape[1])

    def __iter__(self):
        for _ in range(self.times):
            yield from self.frames


def test_memory_stays_flat_over_a_long_stream(tiny_video_model, carphone_frames, tmp_path):
    import psutil

    process = psutil.Process()
    rss = {}

    def progress(done):
        for mark in (200, 1200):
            if done >= mark and mark not in rss:
                rss[mark] = process.memory_info().rss

    with load_runner(tiny_video_model("frame"), "ort-cpu") as runner:
        report = run_video(runner, LoopedClip(carphone_frames, 50), StreamOptions(chunk=8),
                           VideoOutputs(video=tmp_path / "long.mp4", latents=tmp_path / "long.vaelat"),
                           progress)
    assert report.frames == 1200
    growth_mb = (rss[1200] - rss[200]) / 2**20
    assert growth_mb < 20, f"resident memory grew by {growth_mb:.1f} MB from frame 200 to frame 1200"


# ---------------------------------------------------------------- the stages


def test_stages_keep_order_overlap_and_bound_what_is_in_flight():
    produced, consumed = [], []
    ahead = []

    def produce():
        for i in range(40):
            produced.append(i)
            ahead.append(len(produced) - len(consumed))
            yield i

    def consume(item):
        time.sleep(0.002)
        consumed.append(item)

    threads = set()
    def transform(x):
        threads.add(threading.current_thread().name)
        return 2 * x

    run_stages(produce(), transform, consume, depth=2)
    assert consumed == [2 * i for i in range(40)]
    assert threads == {threading.current_thread().name}  # the model step runs in the calling thread
    # depth 2 per queue, plus one item in each stage's hands: never more than 7 items produced but unconsumed
    assert max(ahead) <= 7


@pytest.mark.parametrize("where", ["produce", "transform", "consume"])
def test_stages_raise_the_first_error_and_stop(where):
    consumed = []

    def produce():
        for i in range(1000):
            if where == "produce" and i == 5:
                raise DataError("bad frame 5")
            yield i

    def transform(x):
        if where == "transform" and x == 5:
            raise DataError("bad frame 5")
        return x

    def consume(x):
        if where == "consume" and x == 5:
            raise DataError("bad frame 5")
        consumed.append(x)

    with pytest.raises(DataError, match="bad frame 5"):
        run_stages(produce(), transform, consume)
    assert consumed == list(range(len(consumed))) and len(consumed) <= 5
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-")]
