"""Video sources (OpenCV): everything that reads frames. numpy and OpenCV only, this runs on the edge
install, no torch.

Layout: every frame a source yields is RGB uint8 (H, W, 3), whatever the input (OpenCV decodes BGR; gray
and BGRA inputs are converted), so downstream code never guesses the channel order.

    open_source(spec) -> FrameSource     spec: a video file, a folder of images, a single image (a
                                          one-frame source), a camera index (int or digits), an RTSP/HTTP
                                          URL or a GStreamer pipeline (contains " ! ")

Problems a user can cause (a missing file, a file that is not a video, no frames, an unavailable camera or
stream, images of different sizes) raise DataError with one line naming the input. The sinks that write
frames are video/sinks.py.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from vae_deploy.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
# Suffixes taken as videos when scanning a folder of clips (a single file is tried whatever its name).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                  ".ts", ".mts", ".ogv", ".y4m")
# FFmpeg (inside OpenCV) logs its own complaints ("moov atom not found") to stderr; we report each failure
# as one DataError line instead. Read when OpenCV first uses FFmpeg; a user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
STREAM_OPEN_TIMEOUT_MS = 10_000  # give up on an unreachable RTSP/HTTP source sooner than FFmpeg's 30 s


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
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
        with quiet_opencv():
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
            with quiet_opencv():
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
