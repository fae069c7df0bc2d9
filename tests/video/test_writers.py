"""Video writing through PyAV (video/writers.py, video/sinks.py): H.264 .mp4 that browsers play, lossless FFV1
.mkv at any size, --codec, and the fallbacks. Written files are read back with OpenCV (what `run` reads)
and probed with PyAV."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from cli_support import assert_one_line_error, cli_process

from vae_deploy.cli.options import CODEC_NAMES
from vae_deploy.video import writers
from vae_deploy.video.default_model import DEMO_CLIP, default_model_dir
from vae_deploy.video.jobs import run_job
from vae_deploy.video.metrics import psnr
from vae_deploy.video.model_open import ModelChoice
from vae_deploy.video.pipeline import StreamOptions, VideoOutputs
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sinks import VideoSink
from vae_deploy.video.sources import open_source

NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def demo_reconstruction(tmp_path_factory):
    """The reconstruction frames of `vae-deploy demo` (the packaged model on the demo clip), kept exact by
    writing them as lossless .mkv; and the clip's frame rate."""
    out = tmp_path_factory.mktemp("demo") / "recon.mkv"
    run_job(sample_video_path(DEMO_CLIP), VideoOutputs(video=out), options=StreamOptions(measure=False),
            model=ModelChoice(default_model_dir()))
    source = open_source(out)
    return source.read(), source.fps


@pytest.fixture(scope="module")
def clip_frames():
    return open_source(sample_video_path(DEMO_CLIP)).read(max_frames=12)


def write(path, frames, fps, **kwargs):
    with VideoSink(path, fps=fps, **kwargs) as sink:
        sink.write_all(frames)
    return path


def test_h264_mp4_reads_back_with_its_count_rate_size_and_above_40_db(demo_reconstruction, tmp_path):
    frames, fps = demo_reconstruction
    assert fps == pytest.approx(float(NTSC))
    path = write(tmp_path / "recon.mp4", frames, fps)
    back = open_source(path)
    assert (back.frame_count, back.size) == (120, (176, 144))
    assert back.fps == pytest.approx(float(NTSC), abs=1e-9)
    assert psnr(frames, back.read()) >= 40.0


def test_the_mp4_is_browser_playable_h264_yuv420p_with_the_exact_rate_and_moov_first(clip_frames, tmp_path):
    path = write(tmp_path / "clip.mp4", clip_frames, float(NTSC))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.profile in ("High", "Main")
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == NTSC
        assert stream.frames == 12
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_ffv1_mkv_keeps_every_pixel_of_an_odd_size(clip_frames, tmp_path):
    odd = clip_frames[:, 7:36, 11:48]  # 37x29 of real content
    assert odd.shape[1:3] == (29, 37)
    path = write(tmp_path / "odd.mkv", odd, 25.0)
    back = open_source(path)
    assert back.size == (37, 29) and back.fps == 25.0
    assert np.array_equal(back.read(), odd)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "ffv1"


def test_odd_sized_h264_repeats_the_edge_and_says_so_in_one_line(clip_frames, tmp_path, capfd):
    writers.note.cache_clear()
    odd = clip_frames[:, 7:36, 11:48]
    back = open_source(write(tmp_path / "odd.mp4", odd, 25.0))
    notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == ["note: odd.mp4: h264 stores even sizes, so the 37x29 frames are written as 38x30 (last "
                     "column/row repeated); .mkv keeps the exact size"]
    frames = back.read()
    assert back.size == (38, 30) and frames.shape[0] == 12
    assert psnr(odd, frames[:, :29, :37]) >= 35.0  # the frames themselves, lossy but close
    # the added column and row repeat their neighbours (within the codec's loss)
    assert np.abs(frames[:, :29, 37].astype(int) - frames[:, :29, 36]).mean() < 4
    assert np.abs(frames[:, 29, :37].astype(int) - frames[:, 28, :37]).mean() < 4


@pytest.mark.parametrize("codec, name", [("hevc", "hevc"), ("ffv1", "ffv1"), ("h264", "h264")])
def test_codec_choice_in_mkv(codec, name, clip_frames, tmp_path):
    path = write(tmp_path / f"{codec}.mkv", clip_frames, 25.0, codec=codec)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == name
    assert open_source(path).read().shape == clip_frames.shape


def test_av1_is_written_where_this_ffmpeg_has_an_encoder(clip_frames, tmp_path):
    if writers.plan_writer(tmp_path / "probe.mp4", "av1").codec.name != "av1":
        pytest.skip("this PyAV's FFmpeg has no AV1 encoder")
    path = write(tmp_path / "av1.mp4", clip_frames, 25.0, codec="av1")
    with av.open(str(path)) as container:  # OpenCV's own FFmpeg may lack an AV1 decoder: decode with PyAV
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 12 and psnr(clip_frames, np.stack(decoded)) >= 35.0


def test_a_missing_encoder_falls_back_to_the_suffix_default_with_one_note(clip_frames, tmp_path, monkeypatch,
                                                                          capfd):
    """VVC's encoder (libvvenc) is not in PyAV's wheels: asked for it, an .mp4 is written as H.264."""
    if "libvvenc" in av.codecs_available:
        pytest.skip("this PyAV's FFmpeg has libvvenc")
    monkeypatch.setitem(writers.CODECS, "vvc", writers.CodecSettings("vvc", (("libvvenc", {}),), "yuv420p",
                                                                     True))
    monkeypatch.setitem(writers.CONTAINERS, ".mp4", dataclasses.replace(
        writers.CONTAINERS[".mp4"], codecs=(*writers.CONTAINERS[".mp4"].codecs, "vvc")))
    writers.note.cache_clear()
    path = write(tmp_path / "v.mp4", clip_frames, 25.0, codec="vvc")
    assert capfd.readouterr().err.splitlines() == [
        "note: this PyAV's FFmpeg cannot encode vvc (libvvenc): v.mp4 is written as h264"]
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_without_pyav_opencv_writes_the_video_after_one_note(tmp_path):
    code = ("import sys; sys.modules['av'] = None  # `import av` fails, as where it is not installed\n"
            "import numpy as np\n"
            "from vae_deploy.video.sinks import VideoSink\n"
            "from vae_deploy.video.sources import open_source\n"
            f"path = {str(tmp_path / 'o.mp4')!r}\n"
            "with VideoSink(path, fps=10) as sink:\n"
            "    sink.write_all(np.zeros((5, 32, 48, 3), np.uint8))\n"
            "print(open_source(path).frame_count, sink.fourcc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5", "mp4v"]
    assert result.stderr.splitlines() == ["note: PyAV (the av package) is not installed: o.mp4 is written by "
                                          "OpenCV's mp4v instead of h264 (pip install av)"]


def test_a_codec_the_container_cannot_hold_and_an_unknown_codec_are_one_error_line(tmp_path):
    clip = sample_video_path(DEMO_CLIP)
    result = cli_process("run", clip, "-o", tmp_path / "o.mp4", "--codec", "ffv1", "--max-frames", "8", "-q")
    assert_one_line_error(result, "cannot write ffv1 into o.mp4: .mp4 holds h264, hevc, av1; write ffv1 to "
                                  ".mkv or .avi", 2)
    result = cli_process("run", clip, "-o", tmp_path / "o.mkv", "--codec", "vp9", "--max-frames", "8", "-q")
    assert_one_line_error(result, "unknown codec 'vp9': choose h264, hevc, av1, ffv1", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_run_and_decode_pass_codec_through(tmp_path):
    clip = sample_video_path(DEMO_CLIP)
    result = cli_process("run", clip, "-o", tmp_path / "r.mkv", "--latents", tmp_path / "c.vaelat", "--codec",
                         "h264", "--max-frames", "8", "-q")
    assert result.returncode == 0, result.stderr
    result = cli_process("decode", tmp_path / "c.vaelat", "-o", tmp_path / "d.mkv", "--codec", "h264", "-q")
    assert result.returncode == 0, result.stderr
    for name in ("r.mkv", "d.mkv"):
        with av.open(str(tmp_path / name)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert container.streams.video[0].frames in (0, 8)  # Matroska does not store a count
        assert open_source(tmp_path / name).read().shape[0] == 8


def test_the_cli_codec_names_are_the_writers_registry_and_demo_picks_a_suffix_that_holds_the_codec():
    assert CODEC_NAMES == tuple(writers.CODECS)
    assert [writers.suffix_for(c, ".mp4") for c in (None, *CODEC_NAMES)] == [".mp4"] * 4 + [".mkv"]


def test_frame_rates_become_exact_rationals():
    assert writers.frame_rate(30000 / 1001) == NTSC
    assert writers.frame_rate(25.0) == 25 and writers.frame_rate(12.5) == Fraction(25, 2)
    assert writers.frame_rate(24000 / 1001) == Fraction(24000, 1001)


# ---------------------------------------------------------------- the slowest frame rate a file holds

# Every writer: PyAV for .mp4/.m4v/.mov/.mkv and --codec, OpenCV's Motion JPEG for .avi.
RATE_OUTPUTS = [("o.mp4", None), ("o.m4v", None), ("o.mov", "hevc"), ("o.mkv", None), ("h.mkv", "h264"),
                ("o.avi", None), ("f.avi", "ffv1")]


@pytest.mark.parametrize("name, codec", RATE_OUTPUTS, ids=[f"{n}-{c}" for n, c in RATE_OUTPUTS])
def test_the_slowest_frame_rate_is_written_and_read_back_exactly(clip_frames, tmp_path, name, codec):
    """MIN_OUTPUT_FPS (one frame per 500 s) goes into every container and comes back as 1/500, read by PyAV
    and by OpenCV (which reads the sources)."""
    from vae_deploy.video.sinks import MIN_OUTPUT_FPS

    path = write(tmp_path / name, clip_frames[:3], MIN_OUTPUT_FPS, codec=codec)
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == Fraction(1, 500)
    assert open_source(path).fps == pytest.approx(MIN_OUTPUT_FPS, rel=1e-9)
    assert open_source(path).read().shape[0] == 3


@pytest.mark.parametrize("fps", [0.0004, 1e-300, 0.0019])
def test_a_frame_rate_below_the_slowest_is_refused_not_written_as_24(clip_frames, tmp_path, fps):
    """Fraction(0.0004).limit_denominator(1001) is 0, and FFmpeg wrote such a file at 24 frames/s."""
    from vae_deploy.errors import DataError

    with pytest.raises(DataError, match=r"must be a frame rate of at least 0.002 and at most 1000"):
        write(tmp_path / "slow.mp4", clip_frames[:3], fps)
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_fps_below_the_slowest_in_one_line(tmp_path):
    result = cli_process("run", sample_video_path(DEMO_CLIP), "--out", tmp_path / "o.mp4", "--fps", "0.0004",
                         "--max-frames", "2")
    assert_one_line_error(result, "--fps must be a frame rate of at least 0.002 and at most 1000 frames/s, "
                                  "got 0.0004", 2)
    assert list(tmp_path.iterdir()) == []


def _avi_at(path, fps: Fraction, frames) -> None:
    """A real FFV1 .avi whose stream says `fps` (written by PyAV directly: vae-deploy refuses such rates; AVI
    stores the rate as two integers, so OpenCV reads it back as written)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for i, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            image.pts = i
            container.mux(stream.encode(image))
        container.mux(stream.encode(None))


def test_a_source_rate_below_the_slowest_is_written_at_25_with_one_note(clip_frames, tmp_path):
    """A source whose container says 1e-6 frames/s: outputs are written at 25 frames/s (as for a source
    without a rate), said in one note line, and read back at 25; --fps still sets the rate."""
    source = tmp_path / "slow.avi"
    _avi_at(source, Fraction(1, 10**6), clip_frames[:4])
    assert open_source(source).fps == pytest.approx(1e-6)
    model = default_model_dir()
    result = cli_process("run", source, "--model", model, "--out", tmp_path / "o.mp4", "--latents",
                         tmp_path / "o.vaelat", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"note: video {source} gives a frame rate of 1e-06, below the 0.002 frames/s a video file holds: "
        f"writing 25 frames/s (--fps sets another)"]
    with av.open(str(tmp_path / "o.mp4")) as container:
        assert container.streams.video[0].average_rate == 25
    decoded = cli_process("decode", tmp_path / "o.vaelat", "--model", model, "-o", tmp_path / "d.mp4", "-q")
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr  # the file says 25
    with av.open(str(tmp_path / "d.mp4")) as container:
        assert container.streams.video[0].average_rate == 25
    given = cli_process("run", source, "--model", model, "--out", tmp_path / "g.mp4", "--fps", "0.5", "-q")
    assert given.returncode == 0 and given.stderr == "", given.stderr
    with av.open(str(tmp_path / "g.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(1, 2)
