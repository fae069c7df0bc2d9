"""Video on the edge side (no torch): sources and sinks over OpenCV, sample clips, metrics, the pipeline.

Import what you need from the modules (`vae_deploy.video.io`, `.samples`, `.metrics`); this package
re-exports the I/O entry points.
"""

from vae_deploy.video.io import FrameSource, VideoSink, open_source
from vae_deploy.video.samples import SAMPLE_VIDEOS, sample_video_path

__all__ = ["SAMPLE_VIDEOS", "FrameSource", "VideoSink", "open_source", "sample_video_path"]
