"""Video on the edge side (no torch): sources and sinks over OpenCV, sample clips, metrics, the pipeline.

Import what you need from the modules (`vae_deploy.video.sources`, `.sinks`, `.samples`, `.metrics`); this
package re-exports the I/O entry points.
"""

from vae_deploy.video.samples import SAMPLE_VIDEOS, sample_video_path
from vae_deploy.video.sinks import VideoSink
from vae_deploy.video.sources import FrameSource, open_source

__all__ = ["SAMPLE_VIDEOS", "FrameSource", "VideoSink", "open_source", "sample_video_path"]
