"""Where a run may write and how its outputs are published: the output path policy (an output may not
destroy an input, lie in the model folder or be shared by two outputs; it must be writable) and the atomic
sinks the pipeline writes through (published when the block ends, discarded on an error; video/pipeline.py
keeps them on an interrupt). No torch: this runs on the edge install.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vae_deploy.errors import DataError, VaeDeployError
from vae_deploy.files import ensure_writable_dir
from vae_deploy.runtime.latents import LatentHeader, LatentWriter
from vae_deploy.video.sinks import MAX_FRAMES_HINT, ImageSink, VideoSink, check_sink_path, open_sink
from vae_deploy.video.sources import IMAGE_SUFFIXES


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file: the same real path, or (existing files) the same inode, which
    also catches hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(folder)) in Path(os.path.realpath(path)).parents


def _read_from_folder(path: Path, folder: Path) -> bool:
    """True when an image folder source (video/sources.py ImageFolderSource) reads `path`, or would once it
    is written: an image file directly in the folder, or a link to one of its images."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and _same_file(path.parent,
                                                                                             folder):
        return True
    return path.exists() and any(_same_file(path, image) for image in folder.iterdir()
                                 if image.suffix.lower() in IMAGE_SUFFIXES)


def check_distinct_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path | str | None],
                           folders: dict[str, Path | None] | None = None) -> None:
    """Refuse, before any work, an output that would destroy an input or another output: an output that is
    an input file, lies inside an input folder (`folders`, e.g. the model folder), or that two outputs
    share (the later writer would replace the earlier one's file). Names map to paths; None is absent;
    inputs that are not files (a camera index, a URL) are ignored."""
    named = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    for i, (name, path) in enumerate(named):
        for other, other_path in named[:i]:
            if _same_file(path, other_path):
                raise DataError(f"{other} and {name} are both {path}: give each output its own file")
        for what, source in inputs.items():
            if source is not None and Path(source).is_file() and _same_file(path, Path(source)):
                raise DataError(f"{name} {path} is {what}: writing it would destroy the input; give "
                                f"another file name")
            if source is not None and Path(source).is_dir() and _read_from_folder(path, Path(source)):
                raise DataError(f"{name} {path} is one of the images of {what} {source}, which are read as "
                                f"frames: writing it would destroy or add to the input; give a path outside "
                                f"that folder")
        for what, folder in (folders or {}).items():
            if folder is not None and _inside(path, Path(folder)):
                raise DataError(f"{name} {path} lies inside {what} {folder}: writing there could replace "
                                f"the model's own files; give a path outside it")


def check_output_path(path: Path, what: str, video: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written (one line, no partial file later)."""
    path = Path(path)
    if path.is_dir():
        raise VaeDeployError(f"cannot write {what} to {path}: it is a folder; give a file name")
    if video:
        check_sink_path(path)  # a video container, or an image file for one frame
    ensure_writable_dir(path.parent)
    return path


@contextlib.contextmanager
def video_output(path: Path, fps: float, size: tuple[int, int], frames: int | None = None,
                  source: str = "the source", hint: str = MAX_FRAMES_HINT,
                  codec: str | None = None) -> Iterator[VideoSink | ImageSink]:
    """A VideoSink, or an ImageSink when `path` names an image file, published to `path` only if the block
    ends without an error. `frames` (the source's frame count, when known) lets an image output refuse a
    longer source before any work; `source` and `hint` word that refusal.

    VideoSink keeps a playable partial video after any exception; here an error discards it (the run
    failed) while an interrupt, handled by the caller, leaves the block normally and keeps the frames done.
    """
    sink = open_sink(path, fps, size, frames, source, hint, codec)
    try:
        yield sink
    except BaseException:
        sink.discard()
        raise
    sink.close()


@contextlib.contextmanager
def latent_output(path: Path, header: LatentHeader) -> Iterator[LatentWriter]:
    writer = LatentWriter(path, header)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.close()
