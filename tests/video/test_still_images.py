"""Still images through video models: a single image file is a one-frame source, and frame outputs that name
an image file (.png, .jpg, ...) write that frame as an image (video/sinks.py ImageSink), atomically, refusing
a source of more than one frame in one line, with nothing left behind."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_support import assert_one_line_error, full_disk, invoke_main

from vae_deploy.errors import DataError, OutputError
from vae_deploy.runtime.registry import load_runner
from vae_deploy.video.pipeline import StreamOptions, VideoOutputs, run_video
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sinks import IMAGE_OUTPUT_SUFFIXES, ImageSink, VideoSink, check_sink_path, open_sink
from vae_deploy.video.sources import FrameSource, ImageFileSource, open_source


@pytest.fixture
def vd(capsys, monkeypatch):
    """`vae-deploy` through main() in this process."""
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


@pytest.fixture(scope="module")
def clip_frames() -> np.ndarray:
    """The first frames of the packaged carphone clip (176x144): real pictures, RGB uint8."""
    with open_source(sample_video_path("carphone_pristine")) as source:
        return source.read(max_frames=3)


@pytest.fixture
def photo(tmp_path, clip_frames) -> Path:
    """A real photo as a PNG file: the clip's first frame."""
    path = tmp_path / "photo.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(clip_frames[0], cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def clip(tmp_path, clip_frames) -> Path:
    """A 3-frame lossless video (FFV1) of the clip's first frames: its container knows the frame count."""
    path = tmp_path / "clip.mkv"
    with VideoSink(path, fps=25) as sink:
        sink.write_all(clip_frames)
    return path


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic writer left behind (they are named .<stem>.<random>.part<suffix>)."""
    return sorted(p.name for p in Path(folder).rglob(".*"))


class ArraySource(FrameSource):
    """Frames from an array, counting how many were read: says whether a refusal came before any work.
    `known` False hides the frame count, like a camera or a stream."""

    def __init__(self, frames: np.ndarray, known: bool):
        self.frames = frames
        self.description = "the test frames"
        self.fps = None
        self.frame_count = len(frames) if known else None
        self.size = (frames.shape[2], frames.shape[1])
        self.frames_read = 0

    def __iter__(self):
        for frame in self.frames:
            self.frames_read += 1
            yield frame


# ---------------------------------------------------------------- the source


def test_a_single_image_file_is_a_one_frame_source_without_fps(photo, clip_frames):
    source = open_source(photo)
    assert isinstance(source, ImageFileSource)
    assert (source.frame_count, source.fps, source.size) == (1, None, (176, 144))
    frames = source.read()
    assert frames.shape == (1, 144, 176, 3)
    assert np.array_equal(frames[0], clip_frames[0])  # PNG is lossless: the very pixels written
    assert np.array_equal(source.read(), frames)  # read again: starts from the frame again
    assert open_source(photo, fps=12).fps == 12
    gray = photo.with_name("gray.jpg")
    cv2.imwrite(str(gray), np.full((20, 30), 90, np.uint8))
    assert open_source(gray).read().shape == (1, 20, 30, 3)  # gray images come out RGB, like folders


def test_an_undecodable_image_file_is_one_data_error(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot decode image .*broken.png"):
        open_source(broken)


# ---------------------------------------------------------------- the sink


@pytest.mark.parametrize("suffix", IMAGE_OUTPUT_SUFFIXES)
def test_image_sink_writes_one_frame_in_the_suffixes_format(tmp_path, clip_frames, suffix):
    path = tmp_path / f"frame{suffix}"
    sink = open_sink(path, 25.0, (176, 144))
    assert isinstance(sink, ImageSink)
    with sink:
        sink.write(clip_frames[0])
        assert not path.exists()  # published on close only
    back = read_image(path)
    assert back.shape == (144, 176, 3)
    if suffix in (".jpg", ".jpeg"):  # lossy, but the same picture
        assert np.abs(back.astype(int) - clip_frames[0]).mean() < 4
    else:
        assert np.array_equal(back, clip_frames[0])
    assert leftovers(tmp_path) == []


def test_image_sink_takes_float_frames_and_tiny_images(tmp_path):
    with ImageSink(tmp_path / "f.png") as sink:
        sink.write(np.full((1, 1, 3), 0.5, np.float32))  # no 16-pixel minimum: that is a video encoder's
    assert np.array_equal(read_image(tmp_path / "f.png"), np.full((1, 1, 3), 128, np.uint8))


def test_image_sink_refuses_a_second_frame_and_a_known_longer_source(tmp_path, clip_frames):
    sink = ImageSink(tmp_path / "o.png")
    sink.write(clip_frames[0])
    with pytest.raises(DataError, match=r"o.png as an image: the source holds more than one frame; write a "
                                        r"video \(.mp4/.mkv\) or use --max-frames 1"):
        sink.write(clip_frames[1])
    sink.discard()
    with pytest.raises(DataError, match=r"clip.vaelat holds more than one frame; write a video "
                                        r"\(.mp4/.mkv\)$"):
        ImageSink(tmp_path / "o.png", frames=3, source="clip.vaelat", hint="")
    assert list(tmp_path.iterdir()) == []  # the discarded sink and the refused one left nothing


def test_image_sink_with_no_frame_or_discarded_leaves_nothing(tmp_path, clip_frames):
    with pytest.raises(DataError, match="no frames were written"):
        ImageSink(tmp_path / "none.png").close()
    sink = ImageSink(tmp_path / "dropped.png")
    sink.write(clip_frames[0])
    sink.discard()
    assert list(tmp_path.iterdir()) == []


def test_video_suffixes_still_get_a_video_sink_and_unknown_ones_one_line(tmp_path):
    video = open_sink(tmp_path / "o.mkv", 25.0, (32, 32))
    assert isinstance(video, VideoSink)
    video.discard()
    check_sink_path(tmp_path / "o.PNG")  # suffixes compare case-insensitively
    with pytest.raises(DataError, match=r"vae-deploy writes .mp4, .* videos and .png, .* images "
                                        r"\(one frame\), not .gif"):
        check_sink_path(tmp_path / "o.gif")
    assert leftovers(tmp_path) == []


def test_a_full_disk_is_an_output_error_naming_the_image_and_leaves_nothing(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)  # ~50 KB as PNG
    with full_disk(tmp_path / "disk") as disk:
        sink = ImageSink(disk / "o.png")
        sink.write(noise)
        with pytest.raises(OutputError, match=f"cannot write {disk / 'o.png'}: no space left on device"):
            sink.close()
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ---------------------------------------------------------------- the commands


def test_run_a_photo_to_an_image_and_side_by_side(vd, tiny_video_model, photo, tmp_path):
    ran = vd("run", photo, "--model", tiny_video_model("frame"), "--out", tmp_path / "recon.png",
             "--side-by-side", tmp_path / "both.png")
    assert ran.returncode == 0, ran.stderr
    recon, both = read_image(tmp_path / "recon.png"), read_image(tmp_path / "both.png")
    assert recon.shape == (144, 176, 3)  # back at the photo's size
    assert both.shape == (144, 352, 3)
    assert np.array_equal(both[:, :176], read_image(photo))  # source left
    assert np.array_equal(both[:, 176:], recon)  # reconstruction right, the same pixels
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["frame", "causal3d-t2"])  # causal3d-t2 pads the lone frame to 2
def test_encode_then_decode_to_png_equals_run_byte_for_byte(vd, tiny_video_model, photo, tmp_path, name):
    model = tiny_video_model(name)
    assert vd("run", photo, "--model", model, "--out", tmp_path / "run.png").returncode == 0
    encoded = vd("encode", photo, "--model", model, "-o", tmp_path / "photo.vaelat")
    assert encoded.returncode == 0, encoded.stderr
    decoded = vd("decode", tmp_path / "photo.vaelat", "--model", model, "-o", tmp_path / "dec.png")
    assert decoded.returncode == 0, decoded.stderr
    assert (tmp_path / "dec.png").read_bytes() == (tmp_path / "run.png").read_bytes()


def test_a_diffusers_kl_model_runs_a_photo(vd, tiny_kl_model, photo, tmp_path):
    """AutoencoderKL (a frame VAE with a latent normalization) takes a photo like the in-house models."""
    assert vd("run", photo, "--model", tiny_kl_model, "--out", tmp_path / "run.png", "--size", "32"
              ).returncode == 0
    assert vd("encode", photo, "--model", tiny_kl_model, "-o", tmp_path / "p.vaelat", "--size", "32"
              ).returncode == 0
    assert vd("decode", tmp_path / "p.vaelat", "--model", tiny_kl_model, "-o", tmp_path / "dec.png"
              ).returncode == 0
    assert read_image(tmp_path / "run.png").shape == (144, 176, 3)
    assert (tmp_path / "dec.png").read_bytes() == (tmp_path / "run.png").read_bytes()


def test_max_frames_1_writes_a_videos_first_frame_as_an_image(vd, tiny_video_model, clip, tmp_path):
    model = tiny_video_model("frame")
    assert vd("run", clip, "--model", model, "--out", tmp_path / "first.png", "--max-frames", "1"
              ).returncode == 0
    assert vd("run", clip, "--model", model, "--out", tmp_path / "all.mkv").returncode == 0  # lossless
    with open_source(tmp_path / "all.mkv") as video:
        assert np.array_equal(read_image(tmp_path / "first.png"), video.read(max_frames=1)[0])


@pytest.mark.parametrize("outputs", [["--out", "o.png"], ["--out", "o.mp4", "--side-by-side", "s.png"]],
                         ids=["out", "side-by-side"])
def test_an_image_output_refuses_a_video_in_one_line_and_writes_nothing(vd, tiny_video_model, clip,
                                                                        tmp_path, outputs):
    out = tmp_path / "out"
    args = [str(out / a) if "." in a else a for a in outputs]
    result = vd("run", clip, "--model", tiny_video_model("frame"), *args)
    assert_one_line_error(result, f"as an image: video {clip} holds more than one frame; write a video "
                                  f"(.mp4/.mkv) or use --max-frames 1", 2)
    assert not out.exists() or list(out.iterdir()) == []


def test_decode_of_a_clip_to_an_image_is_refused_without_a_max_frames_hint(vd, tiny_video_model, clip,
                                                                           tmp_path):
    model = tiny_video_model("frame")
    assert vd("encode", clip, "--model", model, "-o", tmp_path / "clip.vaelat").returncode == 0
    result = vd("decode", tmp_path / "clip.vaelat", "--model", model, "-o", tmp_path / "o.png")
    assert_one_line_error(result, "clip.vaelat holds more than one frame; write a video (.mp4/.mkv)", 2)
    assert "--max-frames" not in result.stderr  # decode has no such option
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "clip.vaelat"]


@pytest.mark.parametrize("known", [True, False], ids=["count-known", "count-unknown"])
def test_the_refusal_comes_before_any_frame_when_the_count_is_known(tiny_video_model, clip_frames, tmp_path,
                                                                    known):
    """A source that says its frame count is refused before a frame is read; one that does not (a camera),
    at the second frame written. Either way nothing is published."""
    source = ArraySource(np.concatenate([clip_frames] * 4), known)  # 12 frames
    with load_runner(tiny_video_model("frame"), "ort-cpu") as runner:
        with pytest.raises(DataError, match="the test frames holds more than one frame"):
            run_video(runner, source, StreamOptions(chunk=2, measure=False),
                      VideoOutputs(video=tmp_path / "o.png", latents=tmp_path / "o.vaelat"))
    assert (source.frames_read == 0) == known
    assert list(tmp_path.iterdir()) == []
