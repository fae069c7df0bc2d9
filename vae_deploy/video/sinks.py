"""Video sinks: frames written as a video (PyAV or OpenCV, both encoders here) or as one image. numpy,
OpenCV and PyAV only, this runs on the edge install, no torch.

    VideoSink(path, fps, codec=None)      writes frames through PyAV or OpenCV (video/writers.py plans the
                                          codec by suffix or `codec`) to a temporary name, checks the file
                                          holds every frame, and renames it on close, also after an
                                          exception
    ImageSink(path)                       the same interface for one frame written as an image file
                                          (IMAGE_OUTPUT_SUFFIXES); a second frame is refused
    open_sink(path, fps, size)            the sink the output's suffix asks for
    PyAVEncoder(tmp, target, plan, size, fps)   RGB uint8 frames -> that file with PyAV (FFmpeg); close()
                                          flushes the encoder and finalizes the container
    count_packets(path)                   the video packets a finished file holds (its frame count)

The frames a source reads are video/sources.py's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from vae_deploy.errors import DataError, InputShapeError, OutputError, VaeDeployError
from vae_deploy.files import AtomicFile, unwritten_cause, writing
from vae_deploy.video.sources import quiet_opencv
from vae_deploy.video.writers import (
    OPENCV_FOURCC_BY_SUFFIX,
    WriterPlan,
    av,
    check_codec,
    encoded_size,
    frame_rate,
    note,
    plan_writer,
)


def _rgb24_frame(rgb: np.ndarray):
    """The encoder converts it (to FFV1's bgr0: a lossless reordering)."""
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def _yuv420p_frame(rgb: np.ndarray):
    """OpenCV's RGB -> I420 (BT.601, limited range: swscale's default, which the stream's tags state). It
    releases the GIL and took 0.5 ms for a 1280x480 frame where PyAV's swscale conversion took 2.9 ms plus
    1.4 ms to wrap the RGB array, time the streaming threads otherwise wait for."""
    return av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")


# How an RGB uint8 frame becomes a PyAV frame for each pixel format of CODECS (even sizes for yuv420p).
FRAME_MAKERS = {"yuv420p": _yuv420p_frame, "bgr0": _rgb24_frame}


class PyAVEncoder:
    """Write RGB uint8 (H, W, 3) frames of `size` to `tmp` as `plan` says; `close()` flushes the encoder
    and writes the container's index (the file plays from then on, also after an interrupt)."""

    def __init__(self, tmp: Path, target: Path, plan: WriterPlan, size: tuple[int, int], fps: float):
        self.size = size
        self.stored = encoded_size(plan.codec, size)
        if self.stored != size:
            note(f"{target.name}: {plan.codec.name} stores even sizes, so the {size[0]}x{size[1]} frames are "
                 f"written as {self.stored[0]}x{self.stored[1]} (last column/row repeated); .mkv keeps the "
                 f"exact size")
        self._container = av.open(str(tmp), "w", format=plan.container.format,
                                  options=dict(plan.container.options))
        try:
            stream = self._container.add_stream(plan.encoder, rate=frame_rate(fps))
            stream.width, stream.height = self.stored
            stream.pix_fmt = plan.codec.pix_fmt
            stream.codec_context.options = dict(plan.options)
            if plan.codec.mp4_tag and plan.container.format in ("mp4", "mov"):
                stream.codec_context.codec_tag = plan.codec.mp4_tag
        except BaseException:
            self._container.close()
            raise
        self._stream = stream
        self._pad = ((0, self.stored[1] - size[1]), (0, self.stored[0] - size[0]), (0, 0))
        self._index = 0

    def write(self, rgb: np.ndarray) -> None:
        if self._pad != ((0, 0), (0, 0), (0, 0)):
            rgb = np.pad(rgb, self._pad, mode="edge")
        frame = FRAME_MAKERS[self._stream.pix_fmt](np.ascontiguousarray(rgb))
        frame.pts = self._index
        self._index += 1
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder's delayed frames and finalize the container (raises on a failed write)."""
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def abandon(self) -> None:
        """Close without caring whether the file is complete (it is being discarded)."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is deleted next; its error does not matter
            pass


def count_packets(path: Path) -> int:
    """The video frames a finished file holds: its video packets, demuxed without decoding."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except (av.error.FFmpegError, OSError, IndexError):  # unreadable or no video stream: it holds none
        return 0


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
        with quiet_opencv():
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
        with quiet_opencv():
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
        with quiet_opencv():
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
