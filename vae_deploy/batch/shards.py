"""WebDataset tar shards for `encode-dataset --format webdataset`: the key rule, packing, reading back.

A batch's videos, sorted by their .vaelat output path, are cut into shards of --shard-size videos: shard k
(`DIR/shard-00000k.tar`) holds the videos [k*N, (k+1)*N) of that order, whichever worker finishes first.
Each video that encoded is one sample of two members, in this order:

    <key>.json    its metadata (sample_metadata): source, frames, latent_shape, fps, the model's identity
                  as the .vaelat header carries it, latent_space, truncated
    <key>.vaelat  the exact bytes `vae-deploy encode` writes for that video (decode works on it extracted)

The key rule. WebDataset splits a member name into key and extension at the first dot of its basename
(webdataset.tariterators.base_plus_ext), so a key's basename must hold no dot. The key is the .vaelat
output path without `.vaelat`, its basename percent-escaped: "%" -> "%25", then "." -> "%2E"
(`a/clip.v2.mp4` -> `a/clip%2Ev2`). Escaping, unlike replacing dots, maps different paths to different
keys, so no two videos can share one. Folders may keep their dots (the reader splits the basename only).

Determinism: members are written in that fixed order with mtime 0, uid/gid 0, empty user/group names and
mode 0644 (PAX format, which tarfile adds headers to only for long or non-ASCII names), so the local and
ray engines and a rerun write byte-identical shards. A shard is written to a temporary name of its own
(files.AtomicFile) and renamed when whole; a failed video is absent from it (the index says why).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from vae_deploy.batch.index import IndexEntry
from vae_deploy.batch.sources import LATENT_SUFFIX
from vae_deploy.files import AtomicFile, writing
from vae_deploy.runtime.latents import LatentHeader

# About 1000 videos a shard: at the few hundred KB of latents a short clip gives, shards of a few hundred
# MB, inside the 100 MB - 1 GB that WebDataset readers stream well; a batch of millions of clips stays at
# thousands of files. Large latents (long or high-resolution videos) want a smaller --shard-size.
DEFAULT_SHARD_SIZE = 1000
META_SUFFIX = ".json"
PARTS_SUFFIX = ".parts"


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def parts_folder(number: int) -> str:
    """Where workers put a shard's finished .vaelat files until it is packed."""
    return f"shard-{number:06d}{PARTS_SUFFIX}"


def sample_key(output: str) -> str:
    """The WebDataset key of a video whose .vaelat output path (relative, "/"-separated) is `output`."""
    path = PurePosixPath(output)
    stem = path.name[: -len(LATENT_SUFFIX)] if path.name.endswith(LATENT_SUFFIX) else path.name
    escaped = stem.replace("%", "%25").replace(".", "%2E")
    return str(path.parent / escaped) if str(path.parent) != "." else escaped


def sample_metadata(entry: IndexEntry, header: LatentHeader) -> bytes:
    """The `<key>.json` member: what a training loop needs without opening the latents."""
    meta = {"source": entry.source, "frames": entry.frames, "latent_shape": entry.latent_shape,
            "fps": header.fps, "model_fingerprint": header.model_fingerprint, "model_kind": header.model_kind,
            "latent_space": header.latent_space, "truncated": bool(entry.truncated)}
    return (json.dumps(meta, sort_keys=True) + "\n").encode("utf-8")


def shard_members(path: Path) -> list[str] | None:
    """The member names of the shard at `path` in order, or None when it is missing or does not read
    back whole (a member's data running past the end of the file counts as not whole)."""
    try:
        size = path.stat().st_size
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError):
        return None
    if any(m.offset_data + m.size > size for m in members):
        return None
    return [m.name for m in members]


@dataclass
class Sample:
    key: str
    part: Path | None  # the finished .vaelat part; None: both members are copied from the shard as it is
    meta: bytes | None = None  # the .json member when `part` is given


def _add(tar: tarfile.TarFile, name: str, size: int, data: BinaryIO) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, data)


def pack_shard(target: Path, samples: Iterable[Sample]) -> None:
    """Write the shard `target` from `samples` in their order, atomically; samples without a part are
    copied from the existing `target` (a shard repacked because a video that had failed now encoded)."""
    samples = list(samples)
    previous = tarfile.open(target, "r:") if any(s.part is None for s in samples) else None
    out = AtomicFile(target)
    try:
        with writing(target):
            with open(out.tmp, "wb") as fh:
                with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for sample in samples:
                        meta_name, latent_name = sample.key + META_SUFFIX, sample.key + LATENT_SUFFIX
                        if sample.part is None:
                            for name in (meta_name, latent_name):
                                member = previous.getmember(name)
                                _add(tar, name, member.size, previous.extractfile(member))
                            continue
                        _add(tar, meta_name, len(sample.meta), io.BytesIO(sample.meta))
                        with open(sample.part, "rb") as part:
                            _add(tar, latent_name, os.fstat(part.fileno()).st_size, part)
                fh.flush()
                os.fsync(fh.fileno())
            out.publish()
    finally:
        out.discard()
        if previous is not None:
            previous.close()
