"""Which videos a batch holds, and where each one's latents go.

A SOURCE argument is a video file, a folder (searched recursively for the video suffixes of video/sources.py,
hidden files and folders skipped; symlinked subfolders are followed, each real folder once, so a link
back up the tree is no loop) or a `.txt` file listing one path per line (blank lines and `#` comments
skipped; relative paths are relative to the list's folder; a listed folder is searched like an argument).

Each video's output mirrors its path relative to the folder it was found under: `clips/a/b.mp4` found
under `clips/` -> `DIR/a/b.vaelat`. A file given directly is its name (`DIR/b.vaelat`); a relative path
in a list keeps its folders (`sub/b.mp4` -> `DIR/sub/b.vaelat`). The same file reached twice is taken
once; two different videos that would share an output are refused before any work.

source_identity: what the index records of a video so that a rerun sees it was replaced. Size and mtime
alone miss a replacement that keeps both (`cp -p`, rsync -t of a same-size file); hashing whole videos
would make a rerun read the whole corpus. The sha256 of the size and the first and last MiB reads at most
2 MiB a video (a rerun already reads every finished .vaelat whole to check its checksum), and a replaced
video cannot keep it unless it differs only in its middle.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vae_deploy.errors import ConfigError, DataError
from vae_deploy.video.sources import VIDEO_SUFFIXES

LATENT_SUFFIX = ".vaelat"
LIST_SUFFIX = ".txt"


@dataclass(frozen=True)
class VideoTask:
    source: str  # the video's path, as found
    output: str  # its .vaelat path relative to the output folder, with "/" separators

    def output_path(self, out_dir: Path) -> Path:
        return Path(out_dir, *PurePosixPath(self.output).parts)


IDENTITY_BYTES = 1 << 20  # source_identity hashes this much of a video's start and of its end


def source_identity(path: str | Path) -> dict:
    """The index fields that tell a rerun whether the video at `path` is still the one encoded (module
    docstring): source_size, source_mtime_ns, source_digest."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        digest = hashlib.sha256(str(st.st_size).encode() + b"\n")
        digest.update(fh.read(IDENTITY_BYTES))
        if st.st_size > IDENTITY_BYTES:
            fh.seek(max(IDENTITY_BYTES, st.st_size - IDENTITY_BYTES))
            digest.update(fh.read(IDENTITY_BYTES))
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns, "source_digest": digest.hexdigest()}


def _scan(folder: Path) -> list[tuple[Path, PurePosixPath]]:
    found = []
    seen = {_folder_id(folder)}  # real folders entered: a symlink to one of them (a loop, a twin) is skipped
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            key = _folder_id(Path(dirpath) / d)
            if key is not None and key not in seen:
                seen.add(key)
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
                found.append((path, PurePosixPath(*path.relative_to(folder).parts)))
    return found


def _folder_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # through symlinks: the real folder
    except OSError:  # a dangling link
        return None
    return st.st_dev, st.st_ino


def _entry(path: Path, relative: PurePosixPath, what: str) -> list[tuple[Path, PurePosixPath]]:
    if path.is_dir():
        return _scan(path)
    if path.is_file():
        return [(path, relative)]
    if path.exists():
        raise DataError(f"{what} {path} is not a regular file or folder")
    raise DataError(f"no such video, folder or list: {path}{'' if what == 'source' else f' ({what})'}")


def _list_file(path: Path) -> list[tuple[Path, PurePosixPath]]:
    found = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the list of videos {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        listed = Path(line).expanduser()
        relative = PurePosixPath(*listed.parts) if not listed.is_absolute() and ".." not in listed.parts \
            else PurePosixPath(listed.name)
        found += _entry(listed if listed.is_absolute() else path.parent / listed, relative,
                        f"listed in {path}:{number}")
    return found


def collect_videos(sources: list[str | Path]) -> list[VideoTask]:
    """The batch's videos in argument order (each folder sorted), one output each; DataError for a missing
    source, an empty result or two videos sharing an output."""
    if not sources:
        raise ConfigError("give at least one SOURCE: a video file, a folder of videos or a .txt list of "
                          "paths")
    found: list[tuple[Path, PurePosixPath]] = []
    for spec in sources:
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix.lower() == LIST_SUFFIX:
            found += _list_file(path)
        else:
            found += _entry(path, PurePosixPath(path.name), "source")
    tasks: list[VideoTask] = []
    seen: set[str] = set()
    by_output: dict[str, Path] = {}
    for path, relative in found:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        output = str(relative.with_suffix(LATENT_SUFFIX))
        if output in by_output:
            raise DataError(f"{by_output[output]} and {path} would both be encoded to {output}; rename one "
                            f"or encode them into separate --out folders")
        by_output[output] = path
        tasks.append(VideoTask(str(path), output))
    if not tasks:
        suffixes = ", ".join(s[1:] for s in VIDEO_SUFFIXES)
        raise DataError(f"no videos found in {', '.join(map(str, sources))} (looked for {suffixes} files)")
    return tasks
