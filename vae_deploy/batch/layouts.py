"""How a batch lays out its output folder: `--format vaelat` (one .vaelat per video, mirrored paths) or
`--format webdataset` (tar shards, shards.py). jobs.py drives either through the same three calls:

    todo()          the videos to encode, as tasks whose `output` is where a worker writes the .vaelat;
                    what is complete from an earlier run is left out (and a shard whose videos are all
                    finished but that was never packed is packed here)
    entry(result)   a worker's result as the index records it (`output`, `shard`)
    recorded(entry) after the index recorded it: webdataset packs a shard once its last video finished

DIR/dataset.json records what made the folder on a batch's first run: the layout (format, shard size), the
model (Manifest.fingerprint, a sha256 over the hashes of the model's files, and its kind) and every option
that changes the latents (SETTINGS: --size, --fit, --chunk, --max-frames, --fps, --raw-latents). A rerun
that disagrees on any of them is refused in one line naming the setting, instead of mixing two models or
two layouts in one folder. A folder from before dataset.json existed (an index, no dataset.json) holds the
vaelat layout; a dataset.json from before it recorded the model and options is completed by the next run.
Either way a video counts as complete only when its .vaelat header names this model.

A video also counts as complete only while its source is the one encoded: its index entry's source
identity (sources.source_identity: size and a digest of its first and last MiB) matches the file now. An
entry from before identities were recorded is taken as it is.

webdataset resume: workers write each finished .vaelat into its shard's parts folder
(`DIR/shard-000003.parts/<key>.vaelat`). A video is complete when its index entry is "ok" and either its
shard reads back holding it or its part reads back whole (LatentReader, checksum included); the rest are
redone. A shard is packed when every video of it has finished (ok or failed), then its parts folder is
removed; an interrupt keeps the parts finished so far.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from vae_deploy.batch.index import INDEX_FILE, BatchIndex, IndexEntry, read_index
from vae_deploy.batch.shards import (
    DEFAULT_SHARD_SIZE,
    Sample,
    pack_shard,
    parts_folder,
    sample_key,
    sample_metadata,
    shard_members,
    shard_name,
)
from vae_deploy.batch.sources import LATENT_SUFFIX, VideoTask, source_identity
from vae_deploy.errors import ConfigError, DataError, VaeDeployError
from vae_deploy.files import write_json_atomic
from vae_deploy.runtime.latents import LatentHeader, LatentReader

FORMATS = ("vaelat", "webdataset")
DATASET_FILE = "dataset.json"


def layout_record(output_format: str, shard_size: int | None) -> dict:
    """What dataset.json holds for these options (checked: format known, shard size only for shards)."""
    if output_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if output_format != "webdataset":
        if shard_size is not None:
            raise ConfigError("--shard-size is for --format webdataset (videos per tar shard)")
        return {"format": output_format}
    if shard_size is None:
        shard_size = DEFAULT_SHARD_SIZE
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    return {"format": output_format, "shard_size": shard_size}


# dataset.json keys that must agree between a folder and a rerun, after format and shard size (their flag
# comes from the key: "max_frames" -> --max-frames); model_kind is recorded to name the model in messages
SETTINGS = ("model_fingerprint", "size", "fit", "chunk", "max_frames", "fps", "raw_latents", "tile",
            "tile_budget")


def settings_record(model_fingerprint: str, model_kind: str, options, blended_tiles: bool = False) -> dict:
    """What dataset.json holds of the model and of the StreamOptions that change the latents. The tile
    request is held only for a model whose encoder tiles are blended (AutoencoderKL): there tiled latents
    differ from untiled ones, so a rerun with another --tile or --tile-budget would mix the two in one
    folder; exact tiles give the untiled latents, and --tile does not change them."""
    tile = options.tile if blended_tiles else None
    return {"model_fingerprint": model_fingerprint, "model_kind": model_kind, "size": options.short_side,
            "fit": options.fit, "chunk": options.chunk, "max_frames": options.max_frames, "fps": options.fps,
            "raw_latents": options.raw_latents, "tile": None if tile is None else str(tile.tile),
            "tile_budget": None if tile is None else tile.budget}


def _options(record: dict) -> str:
    shard_size = record.get("shard_size")
    return f"--format {record.get('format')}" + (f" --shard-size {shard_size}" if shard_size else "")


def _setting(key: str, record: dict) -> str:
    """How one setting of a record reads on a command line."""
    value = record.get(key)
    if key == "model_fingerprint":
        return f"the {record.get('model_kind')} model {str(value)[:12]}... (--model)"
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}" if value is not None else f"no {flag}"


def existing_layout(out_dir: Path) -> dict | None:
    """The layout recorded in `out_dir`, or None for a folder no batch has written to."""
    path = Path(out_dir) / DATASET_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        entries = read_index(Path(out_dir) / INDEX_FILE)
        if not entries:
            return None
        if any(e.shard for e in entries.values()):
            raise DataError(f"{out_dir} holds shards but no {DATASET_FILE} saying their size; encode into "
                            f"another --out") from err
        return {"format": "vaelat"}  # written before dataset.json existed: only vaelat did
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") not in FORMATS:
        raise DataError(f"{path} is not a layout vae-deploy wrote (no known format in it)")
    return record


def check_layout(out_dir: Path, record: dict) -> dict | None:
    """Refuse a folder made by another layout, model or options (one line naming the first that differs);
    the folder's record (None: no batch wrote there yet)."""
    existing = existing_layout(out_dir)
    if existing is None:
        return None
    path = Path(out_dir) / DATASET_FILE
    if _options(existing) != _options(record):
        raise ConfigError(f"{out_dir} holds a batch encoded with {_options(existing)} (see {path}); rerun "
                          f"with those options or give another --out")
    for key in SETTINGS:
        if key in existing and key in record and existing[key] != record[key]:
            raise ConfigError(f"{out_dir} holds latents made with {_setting(key, existing)} (see {path}), "
                              f"not {_setting(key, record)}: rerun with the same, or give another --out (or "
                              f"remove {out_dir})")
    return existing


def write_layout(out_dir: Path, record: dict) -> Path:
    path = Path(out_dir) / DATASET_FILE
    write_json_atomic(path, record)
    return path


def open_layout(record: dict, out_dir: Path, tasks: list[VideoTask], index: BatchIndex):
    model = record["model_fingerprint"]
    if record["format"] == "webdataset":
        return WebDatasetLayout(out_dir, tasks, index, record["shard_size"], model)
    return VaelatLayout(out_dir, tasks, index, model)


def _header(path: Path) -> LatentHeader | None:
    """The header of the .vaelat at `path` when it reads back whole (checksum included), else None."""
    try:
        return LatentReader(path).header
    except VaeDeployError:
        return None


def _made_by(path: Path, model_fingerprint: str) -> bool:
    """Whether the .vaelat at `path` reads back whole and was encoded by that model."""
    header = _header(path)
    return header is not None and header.model_fingerprint == model_fingerprint


def _unchanged(entry: IndexEntry, task: VideoTask) -> bool:
    """Whether the source of `task` is still the file its index entry was encoded from (module docstring)."""
    if entry.source_digest is None:
        return True  # recorded before identities were
    try:
        now = source_identity(task.source)
    except OSError:
        return False
    return (now["source_size"], now["source_digest"]) == (entry.source_size, entry.source_digest)


class VaelatLayout:
    """One .vaelat per video at its mirrored path; complete when indexed "ok" from the same source, and the
    file reads back, made by this model."""

    def __init__(self, out_dir: Path, tasks: list[VideoTask], index: BatchIndex, model_fingerprint: str):
        self.out_dir, self.tasks, self.index, self.model = out_dir, tasks, index, model_fingerprint

    def todo(self) -> list[VideoTask]:
        return [t for t in self.tasks
                if not (self.index.is_ok(t.output) and _unchanged(self.index.entries[t.output], t)
                        and _made_by(t.output_path(self.out_dir), self.model))]

    def entry(self, result: IndexEntry) -> IndexEntry:
        return dataclasses.replace(result, shard=None)

    def recorded(self, entry: IndexEntry) -> None:
        pass


class WebDatasetLayout:
    """Shards of `shard_size` videos of the batch's order sorted by output path (module docstring)."""

    def __init__(self, out_dir: Path, tasks: list[VideoTask], index: BatchIndex, shard_size: int,
                 model_fingerprint: str):
        self.out_dir, self.index, self.model = Path(out_dir), index, model_fingerprint
        ordered = sorted(tasks, key=lambda t: t.output)
        self.shards = [ordered[i:i + shard_size] for i in range(0, len(ordered), shard_size)]
        self._member_of: dict[str, str] = {}  # a part's path (a worker's `output`) -> its member name
        self._shard_of: dict[str, int] = {}  # a member name -> its shard's number
        self._unfinished: dict[int, int] = {}  # shard number -> videos of it not finished in this run
        self._encoded: set[int] = set()  # shards with a video encoded in this run (a replaced source's)

    @staticmethod
    def _member(task: VideoTask) -> str:
        return sample_key(task.output) + LATENT_SUFFIX

    def _part(self, number: int, task: VideoTask) -> str:
        return f"{parts_folder(number)}/{self._member(task)}"

    def todo(self) -> list[VideoTask]:
        todo = []
        for number, shard in enumerate(self.shards):
            members = set(shard_members(self.out_dir / shard_name(number)) or ())
            pending = []
            for task in shard:
                member, part = self._member(task), self._part(number, task)
                self._member_of[part], self._shard_of[member] = member, number
                if self.index.is_ok(member) and _unchanged(self.index.entries[member], task) and (
                        member in members or _made_by(self.out_dir / part, self.model)):
                    continue
                pending.append(VideoTask(task.source, part))
            self._unfinished[number] = len(pending)
            if pending:
                todo += pending
            else:
                self._pack(number)  # finished before (an interrupt after its last part, a lost shard file)
        return todo

    def entry(self, result: IndexEntry) -> IndexEntry:
        member = self._member_of[result.output]
        return dataclasses.replace(result, output=member, shard=shard_name(self._shard_of[member]))

    def recorded(self, entry: IndexEntry) -> None:
        number = self._shard_of[entry.output]
        if entry.ok:
            self._encoded.add(number)
        self._unfinished[number] -= 1
        if self._unfinished[number] == 0:
            self._pack(number)

    def _pack(self, number: int) -> None:
        """Write shard `number` from its "ok" videos unless it already holds exactly them; drop its parts."""
        target, parts = self.out_dir / shard_name(number), self.out_dir / parts_folder(number)
        ok = [t for t in self.shards[number] if self.index.is_ok(self._member(t))]
        keys = [sample_key(t.output) for t in ok]
        wanted = [key + suffix for key in keys for suffix in (".json", LATENT_SUFFIX)]
        if shard_members(target) != wanted or number in self._encoded:
            samples = []
            for task, key in zip(ok, keys, strict=True):
                part = self.out_dir / self._part(number, task)
                header = _header(part)
                if header is not None:
                    samples.append(Sample(key, part, sample_metadata(self.index.entries[key + LATENT_SUFFIX],
                                                                     header)))
                else:  # complete in the shard as it is (todo() checked)
                    samples.append(Sample(key, None))
            pack_shard(target, samples)
        shutil.rmtree(parts, ignore_errors=True)
