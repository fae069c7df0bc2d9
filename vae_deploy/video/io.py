"""The old import path of the video sources and sinks, kept for external users: `vae_deploy.video.io` was
split by job into video/sources.py (open_source, the FrameSource classes) and video/sinks.py (VideoSink,
ImageSink, open_sink, the OpenCV and PyAV encoders). Import from those modules; this one only re-exports
the names it used to hold.
"""

from vae_deploy.video.sinks import (
    FOURCC_BY_SUFFIX,
    IMAGE_OUTPUT_SUFFIXES,
    MAX_FRAMES_HINT,
    MAX_OUTPUT_FPS,
    MIN_OUTPUT_FPS,
    MIN_OUTPUT_SIDE,
    ImageSink,
    VideoSink,
    check_output_fps,
    check_output_size,
    check_sink_path,
    fourcc_for,
    is_image_output,
    open_sink,
    to_uint8,
)
from vae_deploy.video.sources import (
    IMAGE_SUFFIXES,
    SOURCE_KINDS,
    STREAM_OPEN_TIMEOUT_MS,
    VIDEO_SUFFIXES,
    CaptureSource,
    FrameSource,
    ImageFileSource,
    ImageFolderSource,
    open_source,
    to_rgb,
)

__all__ = [
    "FOURCC_BY_SUFFIX", "IMAGE_OUTPUT_SUFFIXES", "IMAGE_SUFFIXES", "MAX_FRAMES_HINT", "MAX_OUTPUT_FPS",
    "MIN_OUTPUT_FPS", "MIN_OUTPUT_SIDE", "SOURCE_KINDS", "STREAM_OPEN_TIMEOUT_MS", "VIDEO_SUFFIXES",
    "CaptureSource", "FrameSource", "ImageFileSource", "ImageFolderSource", "ImageSink", "VideoSink",
    "check_output_fps", "check_output_size", "check_sink_path", "fourcc_for", "is_image_output",
    "open_sink", "open_source", "to_rgb", "to_uint8",
]
