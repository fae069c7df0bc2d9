"""Video sources (OpenCV) and sinks (PyAV or OpenCV): numpy, OpenCV and PyAV only, this runs on the edge
install, no torch.

Layout: every frame a source yields is RGB uint8 (H, W, 3), whatever the input (OpenCV decodes BGR; gray
and BGRA inputs are converted), so downstream code never guesses the channel order.

    open_source(spec) -> FrameSource     spec: a video file, a folder of images, a single image (a
                                          one-frame source), a camera index (int or digits), an RTSP/HTTP
                                          URL or a GStreamer pipeline (contains " ! ")
    VideoSink(path, fps, codec=None)      writes frames through PyAV or OpenCV (video/writers.py: codec
                                          by suffix or `codec`) to a temporary name, checks the file
                                          holds every frame, and renames it on close, also after an
                                          exception
    ImageSink(path)                       the same interface for one frame written as an image file
                                          (IMAGE_OUTPUT_SUFFIXES); a second frame is refused
    open_sink(path, fps, size)            the sink the output's suffix asks for

Problems a user can cause (a missing file, a file that is not a video, no frames, an unavailable camera or
stream, images of different sizes) raise DataError with one line naming the input.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from vae_deploy.errors import DataError, InputShapeError, OutputError, VaeDeployError
from vae_deploy.files import AtomicFile, unwritten_cause, writing
from vae_deploy.video.writers import (
    OPENCV_FOURCC_BY_SUFFIX,
    PyAVEncoder,
    WriterPlan,
    check_codec,
    count_packets,
    plan_writer,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
# Suffixes taken as videos when scanning a folder of clips (a single file is tried whatever its name).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                  ".ts", ".mts", ".ogv", ".y4m")
# FFmpeg (inside OpenCV) logs its own complaints ("moov atom not found") to stderr; we report each failure
# as one DataError line instead. Read when OpenCV first uses FFmpeg; a user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
STREAM_OPEN_TIMEOUT_MS = 10_000  # give up on an unreachable RTSP/HTTP source sooner than FFmpeg's 30 s


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings while probing inputs: we report failures ourselves, in one line."""
    # OpenCV 5 binds the log level as cv2.utils.logging; 4.x (the edge install's floor, the last releases
    # that run with numpy 1.x) only as cv2.getLogLevel/setLogLevel, where 0 is LOG_LEVEL_SILENT.
    api = getattr(getattr(cv2, "utils", None), "logging", None)
    if api is not None:
        get_level, set_level, silent = api.getLogLevel, api.setLogLevel, api.LOG_LEVEL_SILENT
    else:
        get_level, set_level, silent = cv2.getLogLevel, cv2.setLogLevel, 0
    # FFmpeg's own demuxer messages (a header-only .mkv) go to stderr unless its log level is set before
    # OpenCV first opens a file; setdefault keeps a level the user chose.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    level = get_level()
    set_level(silent)
    try:
        yield
    finally:
        set_level(level)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or gray; uint8) -> RGB uint8 (H, W, 3)."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class FrameSource:
    """Frames from somewhere: iterate to get RGB uint8 (H, W, 3) arrays.

    `fps` and `frame_count` are None when the source does not know them (a camera, a stream, an image
    folder without an fps given); `size` is (width, height), as OpenCV and most tools state it.
    File and folder sources can be iterated again (each pass starts from the first frame); live sources
    (camera, stream) continue where the previous pass stopped.
    """

    description: str
    fps: float | None
    frame_count: int | None
    size: tuple[int, int]
    path: Path | None = None  # the file or folder read; None for a camera or a stream

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read(self, max_frames: int | None = None) -> np.ndarray:
        """All frames (or the first `max_frames`) as one array (T, H, W, 3) uint8."""
        frames = []
        for frame in self:
            if max_frames is not None and len(frames) >= max_frames:
                break
            frames.append(frame)
        return np.stack(frames)

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description}, size={self.size}, fps={self.fps}, " \
               f"frames={self.frame_count})"


class CaptureSource(FrameSource):
    """A cv2.VideoCapture: video file, camera or network stream.

    The first frame is read when the source opens, so an unreadable input fails at `open_source`, not in
    the middle of a pipeline.
    """

    def __init__(self, opener: Callable[[], cv2.VideoCapture], description: str, *, live: bool,
                 unavailable: str, fps: float | None = None, path: Path | None = None):
        self._opener = opener
        self.description = description
        self.path = path
        self.live = live
        with _quiet_opencv():
            cap = opener()
            if not cap.isOpened():
                cap.release()
                raise DataError(unavailable)
            ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise DataError(f"{description} has no frames that OpenCV can decode")
        self._cap: cv2.VideoCapture | None = cap
        self._first: np.ndarray | None = first
        reported_fps = cap.get(cv2.CAP_PROP_FPS)
        known = bool(reported_fps) and np.isfinite(reported_fps) and reported_fps > 0  # 0 or NaN: unknown
        self.fps = fps or (float(reported_fps) if known else None)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if not live and count and count > 0 else None
        self.size = (int(first.shape[1]), int(first.shape[0]))

    def _capture(self) -> tuple[cv2.VideoCapture, np.ndarray | None]:
        if self._cap is None:  # a file read before: start it again
            if self.live:
                raise DataError(f"{self.description} was closed")
            with _quiet_opencv():
                self._cap = self._opener()
            self._first = None
        return self._cap, self._first

    def __iter__(self) -> Iterator[np.ndarray]:
        cap, first = self._capture()
        self._first = None
        try:
            if first is not None:
                yield to_rgb(first)
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                yield to_rgb(frame)
        finally:
            if not self.live:  # files rewind by reopening; live sources keep their position
                self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _natural_key(path: Path) -> list:
    """frame2.png before frame10.png: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class ImageFolderSource(FrameSource):
    """The images of a folder in natural name order (frame2 before frame10); all must share one size."""

    def __init__(self, folder: Path, fps: float | None = None):
        self.folder = self.path = folder
        self.description = f"image folder {folder}"
        self.files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                             and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not self.files:
            raise DataError(f"{folder} has no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) and is not "
                            f"a video")
        self.fps = fps
        self.frame_count = len(self.files)
        first = self._load(self.files[0])
        self.size = (int(first.shape[1]), int(first.shape[0]))

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        # IMREAD_COLOR: gray and palette images come out as 3 channels, 16-bit ones as 8-bit
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"cannot decode image {path}")
        return image

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.files:
            image = self._load(path)
            if (image.shape[1], image.shape[0]) != self.size:
                raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]}, but the folder's first image "
                                f"is {self.size[0]}x{self.size[1]}; all frames must share one size")
            yield to_rgb(image)


class ImageFileSource(ImageFolderSource):
    """One image file as a one-frame source, so a photo goes through a video model like a clip (no fps,
    like an image folder)."""

    def __init__(self, path: Path, fps: float | None = None):
        self.folder, self.path = path.parent, path
        self.description = f"image {path}"
        self.files = [path]
        self.fps = fps
        self.frame_count = 1
        first = self._load(path)
        self.size = (int(first.shape[1]), int(first.shape[0]))


def _camera(index: int, fps: float | None) -> FrameSource:
    return CaptureSource(lambda: cv2.VideoCapture(index), f"camera {index}", live=True, fps=fps,
                         unavailable=f"camera {index} is not available (no such device, or it is busy)")


def _network_source(url: str, fps: float | None) -> FrameSource:
    if " ! " in url:  # a GStreamer pipeline description
        opener = lambda: cv2.VideoCapture(url, cv2.CAP_GSTREAMER)  # noqa: E731
    else:
        opener = lambda: cv2.VideoCapture(  # noqa: E731
            url, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS])
    return CaptureSource(opener, f"stream {url}", live=True, fps=fps,
                         unavailable=f"cannot open stream {url} (unreachable, or no OpenCV backend for it)")


def _video_file(path: Path, fps: float | None) -> FrameSource:
    return CaptureSource(lambda: cv2.VideoCapture(str(path)), f"video {path}", live=False, fps=fps,
                         unavailable=f"{path} is not a video OpenCV can decode", path=path)


def _path(spec: str | Path, fps: float | None) -> FrameSource:
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, fps)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFileSource(path, fps)
        return _video_file(path, fps)
    if path.exists():  # a device (/dev/zero), a pipe or a socket: nothing OpenCV can seek through
        raise DataError(f"{path} is not a regular file or folder; give a video file, an image folder, a "
                        f"camera index or a URL")
    raise DataError(f"no such file or folder: {path}")


def _is_camera(spec: object) -> bool:
    if isinstance(spec, str):
        return spec.isdigit()
    return isinstance(spec, int) and not isinstance(spec, bool)


def _is_stream(spec: object) -> bool:
    return isinstance(spec, str) and ("://" in spec or " ! " in spec)


# Which kind of source a spec names, tried in order (a registry, not an if/elif chain over kinds).
SOURCE_KINDS: list[tuple[str, Callable[[object], bool], Callable[..., FrameSource]]] = [
    ("camera", _is_camera, lambda spec, fps: _camera(int(spec), fps)),
    ("stream", _is_stream, _network_source),
    ("path", lambda spec: isinstance(spec, (str, Path)), _path),
]


def open_source(spec: str | Path | int, fps: float | None = None) -> FrameSource:
    """Open a video file, a folder of images, a camera index or an RTSP/GStreamer URL.

    `fps` overrides what the source reports (and gives image folders one).
    """
    for _, matches, build in SOURCE_KINDS:
        if matches(spec):
            return build(spec, fps)
    raise DataError(f"cannot read video from {spec!r}: give a file, a folder, a camera index or a URL")


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8 (rounded, clipped); uint8 passes through."""
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype.kind != "f":
        raise InputShapeError(f"frames must be uint8 or float in [0, 1], got dtype {frame.dtype}")
    return (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# Which codec each video suffix gets, and who writes it, is video/writers.py's table: PyAV (FFmpeg) writes
# .mp4/.m4v/.mov as H.264 and .mkv as lossless FFV1; OpenCV writes .avi (Motion JPEG), and the others where
# PyAV is missing. Other suffixes (.webm, .bin, none) are refused.
FOURCC_BY_SUFFIX = OPENCV_FOURCC_BY_SUFFIX
# MPEG-4 part 2 stores the frame rate as a time base of at most 65535 ticks per second, and a frame rate
# of inf makes OpenCV's writer loop forever; 1000 frames/s is far above any real video.
MAX_OUTPUT_FPS = 1000.0
# PyAV's writer stores a rate as a fraction with a denominator of at most 1001 (writers.frame_rate): below
# 1/2002 that is 0 and FFmpeg silently wrote 24 frames/s instead. OpenCV's FFmpeg writers (.avi, and the
# fallbacks) refuse 0.001 and below. One frame per 500 s is written and read back exactly by every writer
# and container (tests/video/test_writers.py).
MIN_OUTPUT_FPS = 0.002
# The encoders refuse frames of 1 pixel (mp4v, FFV1) and Motion JPEG crashed the process on a 4x4 video
# (OpenCV 5.0); a video output must be at least this many pixels on each side.
MIN_OUTPUT_SIDE = 16


def fourcc_for(path: Path) -> str:
    """The codec OpenCV writes `path` with, by its suffix; DataError for a suffix it cannot write."""
    fourcc = FOURCC_BY_SUFFIX.get(Path(path).suffix.lower())
    if fourcc is None:
        raise DataError(f"cannot write video {path}: videos are {', '.join(FOURCC_BY_SUFFIX)} files, not "
                        f"{Path(path).suffix or 'a file without a suffix'}")
    return fourcc


def check_output_fps(fps: float, what: str = "--fps") -> float:
    if not (math.isfinite(fps) and MIN_OUTPUT_FPS <= fps <= MAX_OUTPUT_FPS):
        raise DataError(f"{what} must be a frame rate of at least {MIN_OUTPUT_FPS:g} and at most "
                        f"{MAX_OUTPUT_FPS:g} frames/s, got {fps:g}")
    return float(fps)


def check_output_size(path: Path, size: tuple[int, int]) -> None:
    w, h = size
    if min(w, h) < MIN_OUTPUT_SIDE:
        raise DataError(f"cannot write video {path}: its frames would be {w}x{h}, and video outputs need at "
                        f"least {MIN_OUTPUT_SIDE}x{MIN_OUTPUT_SIDE} pixels")


def _rgb_frame(path: Path, frame: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, tuple]:
    """A frame for a sink of `path`: RGB (H, W, 3) (or gray (H, W)) of the sink's `size` (None: this frame's)
    -> (RGB uint8, contiguous, the size)."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None].repeat(3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputShapeError(f"frames for {path.name} must be (H, W, 3) RGB, got {frame.shape}")
    if size is None:
        size = (int(frame.shape[1]), int(frame.shape[0]))
    if (frame.shape[1], frame.shape[0]) != tuple(size):
        raise InputShapeError(f"frames for {path.name} must be {size[0]}x{size[1]} (W x H), got "
                              f"{frame.shape[1]}x{frame.shape[0]}")
    return np.ascontiguousarray(to_uint8(frame)), size


def _bgr_frame(path: Path, frame: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, tuple]:
    """As _rgb_frame, in OpenCV's BGR order."""
    rgb, size = _rgb_frame(path, frame, size)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), size


class _OpenCVEncoder:
    """cv2.VideoWriter with `fourcc`: the writer of .avi, and of every video where PyAV is missing."""

    def __init__(self, tmp: Path, target: Path, fourcc: str, size: tuple[int, int], fps: float):
        with _quiet_opencv():
            self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise VaeDeployError(f"cannot write {target}: OpenCV's {fourcc} encoder refused "
                                 f"{size[0]}x{size[1]} frames at {fps:g} frames/s")

    def write(self, rgb: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()  # writes the container index: the file is playable from here on

    abandon = close


class VideoSink:
    """Write RGB frames (H, W, 3) uint8, or float in [0, 1], to a video file.

    The codec follows the suffix, or `codec` (h264, hevc, av1, ffv1), as video/writers.py plans it: PyAV
    writes .mp4/.m4v/.mov as H.264 and .mkv as lossless FFV1 (exact pixels, odd sizes included); OpenCV
    writes .avi as Motion JPEG, or any suffix with `fourcc` given (e.g. "mp4v"), or where PyAV is missing.
    The file is written under a temporary name beside the target and renamed when the sink closes, so
    readers never see half a file. Closing flushes the encoder, reads the container back and refuses to
    publish a video that does not hold every frame written (OpenCV's writer only warns when a write fails:
    a full disk); a failed write is an OutputError naming the target. Closing after an exception (`with
    VideoSink(...)` around a failing loop) still finalizes the container and keeps the frames written so
    far as a playable video; `discard()` drops it instead; closing with no frames written leaves no file
    (and, outside an exception, raises DataError).
    """

    def __init__(self, path: str | Path, fps: float = 25.0, size: tuple[int, int] | None = None,
                 fourcc: str | None = None, codec: str | None = None):
        self.path = Path(path)
        self.fps = check_output_fps(fps, f"the frame rate of {self.path}")
        if fourcc is None:
            fourcc_for(self.path)  # the suffix must be a video container
            self.plan = plan_writer(self.path, codec)
        else:
            self.plan = WriterPlan(fourcc=fourcc)
        self.fourcc = self.plan.fourcc  # None when PyAV writes
        if size is not None:
            check_output_size(self.path, size)
        self.size = size  # (width, height); taken from the first frame when None
        self.frames_written = 0
        self._out = AtomicFile(self.path)
        self._tmp = self._out.tmp
        self._writer: PyAVEncoder | _OpenCVEncoder | None = None
        self._closed = False

    def _open(self, width: int, height: int) -> PyAVEncoder | _OpenCVEncoder:
        check_output_size(self.path, (width, height))
        if self.plan.encoder is not None:
            return PyAVEncoder(self._tmp, self.path, self.plan, (width, height), self.fps)
        return _OpenCVEncoder(self._tmp, self.path, self.plan.fourcc, (width, height), self.fps)

    def write(self, frame: np.ndarray) -> None:
        if self._closed:
            raise VaeDeployError(f"{self.path} is already closed")
        frame, self.size = _rgb_frame(self.path, frame, self.size)
        with writing(self.path):
            if self._writer is None:
                self._writer = self._open(*self.size)
            self._writer.write(frame)
        self.frames_written += 1

    def write_all(self, frames) -> None:
        """Write every frame of an iterable or a (T, H, W, 3) array."""
        for frame in frames:
            self.write(frame)

    def _frames_readable(self) -> int:
        """How many frames the finished temporary file gives back: its video packets for a PyAV file; for
        an OpenCV one the container's count when it agrees, else a decode of the whole file (the count is an
        estimate in some containers)."""
        if self.plan.encoder is not None:
            return count_packets(self._tmp)
        with _quiet_opencv():
            cap = cv2.VideoCapture(str(self._tmp))
            try:
                if not cap.isOpened():
                    return 0
                if int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == self.frames_written:
                    return self.frames_written
                count = 0
                while cap.grab():
                    count += 1
                return count
            finally:
                cap.release()

    def _check_complete(self) -> None:
        readable = self._frames_readable()
        if readable != self.frames_written:
            raise OutputError(f"cannot write {self.path}: the video holds {readable} of the "
                              f"{self.frames_written} frames written ({unwritten_cause(self._tmp.parent)}); "
                              f"no file was created")

    def close(self, failed: bool = False) -> None:
        """Finalize the container, check it and move it into place (see the class docstring)."""
        if self._closed:
            return
        self._closed = True
        writer, self._writer = self._writer, None
        if self.frames_written:
            try:
                with writing(self.path):
                    writer.close()  # flushes the encoder, writes the index: the file plays from here on
                self._check_complete()
                with writing(self.path):
                    self._out.publish()
            except BaseException:
                self._out.discard()
                if not failed:
                    raise
            return
        if writer is not None:  # opened, but its first frame failed
            writer.abandon()
        self._out.discard()
        if not failed:
            raise DataError(f"no frames were written to {self.path}; no file was created")

    def discard(self) -> None:
        """Close without publishing anything (the run that fed this sink failed)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.abandon()
            self._writer = None
        self._out.discard()

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


# Image files a frame output may name: one frame written as a picture, by cv2.imencode (format by suffix).
# PNG, BMP, TIFF and WebP (OpenCV's default WebP quality is lossless) keep every pixel; JPEG does not.
IMAGE_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_FRAMES_HINT = " or use --max-frames 1"  # what a `run` user can do about a longer source


def is_image_output(path: str | Path) -> bool:
    """True when `path` names an image file (one frame) rather than a video."""
    return Path(path).suffix.lower() in IMAGE_OUTPUT_SUFFIXES


def check_sink_path(path: str | Path, codec: str | None = None) -> None:
    """DataError, before any work, for a frame output whose suffix no sink writes, or that cannot hold
    --codec `codec`."""
    if is_image_output(path):
        if codec is not None:
            raise DataError(f"--codec {codec} is for videos; {Path(path).name} is an image")
        return
    if Path(path).suffix.lower() in FOURCC_BY_SUFFIX:
        check_codec(Path(path), codec)
    else:
        raise DataError(f"cannot write {path}: vae-deploy writes {', '.join(FOURCC_BY_SUFFIX)} videos and "
                        f"{', '.join(IMAGE_OUTPUT_SUFFIXES)} images (one frame), not "
                        f"{Path(path).suffix or 'a file without a suffix'}")


def _more_than_one(path: Path, source: str, hint: str) -> DataError:
    return DataError(f"cannot write {path} as an image: {source} holds more than one frame; write a video "
                     f"(.mp4/.mkv){hint}")


class ImageSink:
    """Write one RGB frame (H, W, 3) uint8, or float in [0, 1], as an image file (format by suffix).

    The same interface as VideoSink, so a pipeline writes a still image the way it writes a video: the
    frame is kept until `close()`, which encodes it and publishes the file atomically (a temporary name
    renamed into place; a full disk is an OutputError naming the target and leaves nothing). A second frame
    is refused (DataError): an image holds one frame. `frames`, when the caller knows how many frames will
    come, refuses more than one at once, before any work; `source` and `hint` word that message. Closing
    after an exception still publishes the frame written, like VideoSink; `discard()` drops it; closing
    with no frame written leaves no file (and, outside an exception, raises DataError).
    """

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None, frames: int | None = None,
                 source: str = "the source", hint: str = MAX_FRAMES_HINT):
        self.path = Path(path)
        if not is_image_output(self.path):
            raise DataError(f"cannot write {self.path} as an image: give a file ending in "
                            f"{', '.join(IMAGE_OUTPUT_SUFFIXES)}")
        self.source, self.hint = source, hint
        if frames is not None and frames > 1:
            raise _more_than_one(self.path, source, hint)
        self.size = size  # (width, height); taken from the frame when None
        self.frames_written = 0
        self._frame: np.ndarray | None = None
        self._out = AtomicFile(self.path)
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        if self._closed:
            raise VaeDeployError(f"{self.path} is already closed")
        if self.frames_written:
            raise _more_than_one(self.path, self.source, self.hint)
        self._frame, self.size = _bgr_frame(self.path, frame, self.size)
        self.frames_written = 1

    def write_all(self, frames) -> None:
        """Write every frame of an iterable or a (T, H, W, 3) array (one frame, for an image)."""
        for frame in frames:
            self.write(frame)

    def _publish(self) -> None:
        suffix = self.path.suffix.lower()
        with _quiet_opencv():
            ok, encoded = cv2.imencode(suffix, self._frame)
        if not ok:
            raise VaeDeployError(f"cannot write {self.path}: OpenCV's {suffix} encoder refused a "
                                 f"{self.size[0]}x{self.size[1]} image")
        # Written by Python, not cv2.imwrite: a failed write (a full disk) then raises with its errno,
        # which `writing` turns into one OutputError naming the target.
        with writing(self.path):
            with open(self._out.tmp, "wb") as fh:
                fh.write(encoded.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            self._out.publish()

    def close(self, failed: bool = False) -> None:
        """Encode the frame and move the file into place (see the class docstring)."""
        if self._closed:
            return
        self._closed = True
        if self.frames_written:
            try:
                self._publish()
            except BaseException:
                self._out.discard()
                if not failed:
                    raise
            finally:
                self._frame = None
            return
        self._out.discard()
        if not failed:
            raise DataError(f"no frames were written to {self.path}; no file was created")

    def discard(self) -> None:
        """Close without publishing anything (the run that fed this sink failed)."""
        if self._closed:
            return
        self._closed = True
        self._frame = None
        self._out.discard()

    def __enter__(self) -> ImageSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def open_sink(path: str | Path, fps: float = 25.0, size: tuple[int, int] | None = None,
              frames: int | None = None, source: str = "the source",
              hint: str = MAX_FRAMES_HINT, codec: str | None = None) -> VideoSink | ImageSink:
    """The sink for a frame output, by its suffix: an ImageSink for an image file (`frames`, `source`
    and `hint` as ImageSink takes them; fps unused), else a VideoSink (`codec`: None for the suffix's)."""
    if is_image_output(path):
        check_sink_path(path, codec)
        return ImageSink(path, size, frames, source, hint)
    return VideoSink(path, fps, size, codec=codec)
