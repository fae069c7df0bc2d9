"""Which encoder writes a video file: the codecs and containers, and the plan for one output. PyAV only (to
probe its encoders): no torch. The encoders themselves (PyAV and OpenCV) are video/sinks.py's.

    plan_writer(path, codec) -> WriterPlan   the codec and container for `path` (codec None: by suffix),
                                             falling back, with one note line on stderr, where this PyAV
                                             lacks the encoder or PyAV is missing (then OpenCV writes)
    frame_rate(fps), encoded_size(codec, size)   the rate and the frame size a PyAV file stores

By suffix (CONTAINERS): .mp4/.m4v/.mov get H.264 (libx264, yuv420p, High profile, +faststart: browsers,
phones and QuickTime play it), .mkv lossless FFV1 in an RGB pixel format (bgr0: every pixel and every size
kept exactly, so `encode` then `decode` equals `run`), .avi stays OpenCV's Motion JPEG unless --codec asks
for ffv1 or h264. `--codec` offers h264, hevc, av1 and ffv1 (CODECS); a codec a container cannot hold is a
DataError. The 4:2:0 codecs need even sizes: an odd width or height is padded by repeating the last
column/row, with one note line (.mkv keeps the exact size).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from vae_deploy.errors import DataError

# SVT-AV1 prints its banner to stderr unless told to log errors only (read when the encoder opens).
os.environ.setdefault("SVT_LOG", "1")

try:
    import av
except ImportError:  # the edge install has it; a hand-made environment may not: OpenCV writes then
    av = None

# What OpenCV writes by suffix when PyAV does not: .mkv FFV1, .avi Motion JPEG, the MPEG-4 family MPEG-4
# part 2 (mp4v: every OpenCV build has it; browsers refuse it). mp4v stores even sizes only.
OPENCV_FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "FFV1", ".avi": "MJPG"}


@dataclass(frozen=True)
class CodecSettings:
    """One --codec choice: FFmpeg encoders to try in order, each with its options, and the pixel format."""

    name: str
    encoders: tuple[tuple[str, dict[str, str]], ...]
    pix_fmt: str
    even_sizes: bool  # 4:2:0 chroma: width and height must be even
    mp4_tag: str | None = None  # the sample entry players expect in MP4/MOV (hvc1 for HEVC on Apple/browsers)


# The quality settings keep the written video well above a model's own PSNR: H.264 at crf 12 gave 41.3 dB
# against the frames given on the demo clip (4:2:0 itself caps it near 44 dB). Preset superfast: `fast`
# cost `run` about half its frames/s on a 640x480 clip on 2 cores, superfast encodes twice as fast for
# files 1.5x larger, and with OpenCV's colour conversion (sinks._yuv420p_frame) costs 11% there
# (benchmarks/results/video_writer_cost.md). BT.601 tags say how the RGB frames were
# converted (swscale's default matrix), so players convert back the same way.
_BT601 = "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m"
CODECS: dict[str, CodecSettings] = {
    "h264": CodecSettings("h264", (("libx264", {"crf": "12", "preset": "superfast", "profile": "high",
                                                "x264-params": _BT601}),), "yuv420p", True),
    "hevc": CodecSettings("hevc", (("libx265", {"crf": "14", "preset": "fast",
                                                "x265-params": "log-level=error:" + _BT601}),),
                          "yuv420p", True, mp4_tag="hvc1"),
    "av1": CodecSettings("av1", (("libsvtav1", {"crf": "18", "preset": "8"}),
                                 ("libaom-av1", {"crf": "18", "cpu-used": "6"})), "yuv420p", True),
    "ffv1": CodecSettings("ffv1", (("ffv1", {"level": "3"}),), "bgr0", False),
}


@dataclass(frozen=True)
class Container:
    """An output suffix: FFmpeg's muxer, the codecs it holds, the default one (None: OpenCV writes it)."""

    format: str
    codecs: tuple[str, ...]
    default: str | None
    options: dict[str, str] = field(default_factory=dict)


_MP4 = Container("mp4", ("h264", "hevc", "av1"), "h264", {"movflags": "+faststart"})  # moov first: streams
CONTAINERS: dict[str, Container] = {
    ".mp4": _MP4,
    ".m4v": _MP4,
    ".mov": Container("mov", ("h264", "hevc"), "h264", {"movflags": "+faststart"}),
    ".mkv": Container("matroska", ("ffv1", "h264", "hevc", "av1"), "ffv1"),
    ".avi": Container("avi", ("ffv1", "h264"), None),
}


@functools.cache
def note(line: str) -> None:
    """One line on stderr, once per process (a run writing two videos says a fallback once)."""
    print(f"note: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class WriterPlan:
    """How a file is written: by PyAV with `encoder` (codec/container set), or by OpenCV with `fourcc`."""

    codec: CodecSettings | None = None
    encoder: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    container: Container | None = None
    fourcc: str | None = None

    @property
    def description(self) -> str:
        return f"PyAV's {self.encoder}" if self.encoder else f"OpenCV's {self.fourcc}"


@functools.cache
def encoder_opens(encoder: str, pix_fmt: str, options: tuple[tuple[str, str], ...]) -> bool:
    """True when this PyAV's FFmpeg has `encoder` and it opens (a listed encoder may still fail to open)."""
    try:
        context = av.codec.context.CodecContext.create(encoder, "w")
        context.width, context.height, context.pix_fmt = 64, 64, pix_fmt
        context.time_base = Fraction(1, 25)
        context.options = dict(options)
        context.open()  # freed with the object
    except Exception:  # noqa: BLE001 - any failure to open means: not usable here
        return False
    return True


def _usable(codec: CodecSettings) -> tuple[str, dict[str, str]] | None:
    for encoder, options in codec.encoders:
        if encoder_opens(encoder, codec.pix_fmt, tuple(sorted(options.items()))):
            return encoder, options
    return None


def check_codec(path: Path, codec: str | None) -> Container | None:
    """The container for `path`; DataError when --codec `codec` is unknown or cannot go in it."""
    suffix = Path(path).suffix.lower()
    container = CONTAINERS.get(suffix)
    if codec is None:
        return container
    if codec not in CODECS:
        raise DataError(f"unknown codec {codec!r}: choose {', '.join(CODECS)}")
    if container is None or codec not in container.codecs:
        holders = [s for s, c in CONTAINERS.items() if codec in c.codecs]
        raise DataError(f"cannot write {codec} into {path.name}: {suffix or 'a file without a suffix'} "
                        f"holds {', '.join(container.codecs) if container else 'no video'}; write "
                        f"{codec} to {' or '.join(holders)}")
    return container


def suffix_for(codec: str | None, preferred: str) -> str:
    """`preferred` when it holds `codec` (None: its default), else the first suffix that does."""
    if codec is None or codec in CONTAINERS[preferred].codecs:
        return preferred
    holders = [suffix for suffix, container in CONTAINERS.items() if codec in container.codecs]
    if not holders:
        raise DataError(f"unknown codec {codec!r}: choose {', '.join(CODECS)}")
    return holders[0]


def _opencv(path: Path) -> WriterPlan:
    return WriterPlan(fourcc=OPENCV_FOURCC_BY_SUFFIX.get(Path(path).suffix.lower()))


def plan_writer(path: Path, codec: str | None = None) -> WriterPlan:
    """How `path` is written: `codec` (None: the suffix's default), else the suffix's default codec, else
    OpenCV; each fallback says so in one note line."""
    path = Path(path)
    container = check_codec(path, codec)
    wanted = codec or (container.default if container else None)
    if wanted is None:
        return _opencv(path)
    fallback = _opencv(path)
    if av is None:
        note(f"PyAV (the av package) is not installed: {path.name} is written by OpenCV's {fallback.fourcc} "
             f"instead of {wanted} (pip install av)")
        return fallback
    candidates = [wanted] + [c for c in (container.default,) if c is not None and c != wanted]
    for name in candidates:
        found = _usable(CODECS[name])
        if found is not None:
            if name != wanted:
                tried = ", ".join(e for e, _ in CODECS[wanted].encoders)
                note(f"this PyAV's FFmpeg cannot encode {wanted} ({tried}): {path.name} is written as {name}")
            return WriterPlan(CODECS[name], found[0], found[1], container)
    if fallback.fourcc is None:
        raise DataError(f"cannot write {path}: this PyAV's FFmpeg cannot encode {', '.join(candidates)} and "
                        f"OpenCV does not write {path.suffix} files")
    note(f"this PyAV's FFmpeg cannot encode {' or '.join(candidates)}: {path.name} is written by OpenCV's "
         f"{fallback.fourcc}")
    return fallback


def frame_rate(fps: float) -> Fraction:
    """The exact rational rate behind a float one: 29.97002997 -> 30000/1001, 25.0 -> 25, 12.5 -> 25/2."""
    return Fraction(fps).limit_denominator(1001)


def encoded_size(codec: CodecSettings, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) the codec stores: 4:2:0 codecs round odd sides up (the edge is repeated)."""
    w, h = size
    return (w + w % 2, h + h % 2) if codec.even_sizes else (w, h)
