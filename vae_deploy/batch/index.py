"""DIR/index.jsonl: one JSON line per video of a batch.

    source        the video's path
    output        its .vaelat file, relative to DIR
    status        "ok" or "failed"
    frames        source frames encoded (0 when it failed)
    latent_shape  (latent frames, C, h, w) of the file written, or null
    seconds       wall time of this video in its worker
    error         why it failed (one line), or null
    truncated     the video ended before the frame count its container announced (encoded all that decoded)
    shard         --format webdataset: the shard the video belongs to (`output` is then its member name); null
                  for --format vaelat
    source_size, source_mtime_ns, source_digest
                  the source as it was encoded (sources.source_identity): a rerun redoes a video whose
                  source no longer matches (replaced under the same name)

How it is written: append + fsync, not a whole rewrite per video. A batch of millions of clips would
rewrite the whole file after every clip (quadratic); appending one line (a single os.write on an O_APPEND
descriptor) and fsyncing it costs the same at any size. The file stays readable after a crash at any point:
a torn last line is not valid JSON and is skipped when read, and a later line for the same output
supersedes an earlier one. Each run starts by compacting the file (one line per output, torn lines
dropped), written whole through files.write_text_atomic.

One writer per folder: the batch holds an exclusive flock on DIR itself (folder_lock.py, taken in jobs.py
before anything in DIR is read) while a BatchIndex is open. Two batches on one DIR would otherwise both
compact and append: a compaction renamed over the file after the other's append drops that line, and both
would encode the same videos. The second batch fails at once with one line naming the holder's pid, rather
than waiting behind a batch that may run for hours.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from vae_deploy.files import write_text_atomic, writing

INDEX_FILE = "index.jsonl"
OK, FAILED = "ok", "failed"


@dataclass
class IndexEntry:
    """One video's line (the fields in the module docstring). `to_json` and `from_json` keep the on-disk
    keys as they are; a key an older line lacks reads as null, as it was written back before."""

    source: str
    output: str
    status: str = FAILED
    frames: int | None = 0
    latent_shape: list[int] | None = None
    seconds: float | None = 0.0
    error: str | None = None
    truncated: bool | None = False
    shard: str | None = None
    source_size: int | None = None
    source_mtime_ns: int | None = None
    source_digest: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_json(cls, data: object) -> IndexEntry | None:
        """The entry a parsed line holds; None for one that is not an entry (not an object, no output)."""
        if not isinstance(data, dict) or not isinstance(data.get("output"), str):
            return None
        return cls(**{name: data.get(name) for name in FIELDS})


FIELDS = tuple(f.name for f in fields(IndexEntry))  # the keys of a line, in this order


def read_index(path: Path) -> dict[str, IndexEntry]:
    """The latest entry per output; lines that are not whole JSON objects (a torn tail) are skipped."""
    entries: dict[str, IndexEntry] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        try:
            entry = IndexEntry.from_json(json.loads(line))
        except ValueError:
            continue
        if entry is not None:
            entries[entry.output] = entry
    return entries


def _line(entry: IndexEntry) -> str:
    return json.dumps(entry.to_json()) + "\n"


class BatchIndex:
    """The index of one output folder (its caller holds the folder's lock): compacted when opened, then one
    appended line per finished video."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / INDEX_FILE
        self.entries = read_index(self.path)
        with writing(self.path):
            write_text_atomic(self.path, "".join(_line(e) for e in self.entries.values()))

    def is_ok(self, output: str) -> bool:
        entry = self.entries.get(output)
        return entry is not None and entry.ok

    def record(self, entry: IndexEntry) -> None:
        self.entries[entry.output] = entry
        data = _line(entry).encode("utf-8")
        with writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
