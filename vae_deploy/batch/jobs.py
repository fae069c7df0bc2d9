"""`vae-deploy encode-dataset` as a function: encode_dataset_job(sources, out_dir, ...) -> BatchResult.

Steps: collect the videos (sources.py); check the options, the model, backend and chunk once, here, so a
mistake is one line rather than one failure per video; check the folder's record (layouts.py: a rerun with
another --format, --shard-size, model or latent option is refused); let the layout skip each video whose
output is complete (an "ok" index entry from the same source and a .vaelat of this model that opens with
LatentReader, checksum included, or a shard holding it); remove what killed workers or a killed batch left
of this batch's outputs (staging and temporary files); hand the rest to an engine; record each result in
the index as it comes back, and let the layout act on it (webdataset packs a shard when its last video
finished); with --index parquet, copy the index to index.parquet at the end (index_parquet.py). An
interrupt (Ctrl-C, SIGTERM) stops the engine and propagates as KeyboardInterrupt; everything recorded so
far stays in the index (and finished parts). A worker that dies ends the batch the same way, with one line
(WorkerDied).

Folders: the parent makes the output folders of the videos to encode before handing them out, and records
the ones it made; whenever the run ends, those still empty are removed (a stop before their video
finished, a video that failed). A folder that existed before the batch is never removed, empty or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vae_deploy.batch.folder_lock import FolderLock
from vae_deploy.batch.index import INDEX_FILE, BatchIndex, IndexEntry, read_index
from vae_deploy.batch.index_parquet import PARQUET_FILE, check_index_format, write_parquet_index
from vae_deploy.batch.layouts import (
    DATASET_FILE,
    check_layout,
    layout_record,
    open_layout,
    settings_record,
    write_layout,
)
from vae_deploy.batch.shards import shard_name
from vae_deploy.batch.sources import VideoTask, collect_videos
from vae_deploy.batch.worker import EncodeSettings, Fatal, WorkerDied, fatal_error, staging_leftovers
from vae_deploy.errors import ConfigError, DataError
from vae_deploy.files import (
    ensure_writable_dir,
    remove_stale_probes,
    remove_stale_temporaries,
    removing_new_folders,
)
from vae_deploy.runtime.manifest import Manifest, read_manifest
from vae_deploy.runtime.registry import get_backend, runner_class
from vae_deploy.runtime.tile_plan import OFF, TilePlanner, TileRequest, default_budget
from vae_deploy.runtime.tiling import BLEND, tile_records
from vae_deploy.video.default_model import resolve_model
from vae_deploy.video.latent_codec import VideoModelInfo
from vae_deploy.video.model_open import DEFAULT_MODEL, ModelChoice
from vae_deploy.video.pipeline import StreamOptions

ENGINES = ("local", "ray")
BatchProgress = Callable[[int, int], None]  # (videos finished, videos in the batch)


def default_workers() -> int:
    """Half the CPUs (at least 1): each worker's runner gets two threads, and reading a video needs a core."""
    return max(1, (os.cpu_count() or 1) // 2)


def threads_per_worker(workers: int, threads: int | None) -> int:
    """--threads when given, else the CPUs split between the workers (at least 1 each)."""
    return threads if threads is not None else max(1, (os.cpu_count() or 1) // workers)


@dataclass
class BatchResult:
    out_dir: Path
    index: Path
    total: int = 0  # videos in the batch
    skipped: int = 0  # complete from an earlier run
    encoded: int = 0  # encoded by this run
    failed: list[IndexEntry] = field(default_factory=list)  # index entries of the videos that failed
    engine: str = "local"
    workers: int = 1
    threads: int = 1

    @property
    def ok(self) -> int:
        return self.skipped + self.encoded

    def summary(self) -> str:
        line = f"encoded {self.ok} of {self.total} videos"
        if self.skipped:
            line += f" ({self.skipped} already done)"
        if self.failed:
            line += f"; {len(self.failed)} failed (see {self.index})"
        return line


def _check_model(model: Path | None, backend: str, options: StreamOptions, out_dir: Path) -> Manifest:
    model_dir = resolve_model(model)
    manifest = read_manifest(model_dir)
    VideoModelInfo.from_manifest(manifest).check_chunk(options.chunk)
    if options.tile.tile != OFF:  # a tile the model refuses: one line before any worker starts
        TilePlanner(manifest, options.tile)
    get_backend(backend)  # an unknown or unavailable backend: one line naming what to install
    real_out, real_model = Path(os.path.realpath(out_dir)), Path(os.path.realpath(model_dir))
    if real_out == real_model or real_model in real_out.parents:
        raise DataError(f"--out {out_dir} lies inside the model folder {model_dir}: writing there could "
                        f"replace the model's own files; give a folder outside it")
    return manifest


def _make_folders(out_dir: Path, tasks: list[VideoTask]) -> list[Path]:
    """Make the output folders of `tasks`; the ones made here, deepest first."""
    made = []
    for folder in sorted({t.output_path(out_dir).parent for t in tasks}):
        missing = [p for p in (folder, *folder.parents) if p != out_dir and out_dir in p.parents
                   and not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        made += missing
    return sorted(made, key=lambda p: len(p.parts), reverse=True)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds while empty: what a video finished there stays


def _remove_leftovers(out_dir: Path, tasks: list[VideoTask], shards: int = 0) -> None:
    """What a killed worker or batch left of these outputs (the batch holds the folder's lock: they are its
    own): staging files of `tasks`, temporary files of the index, dataset.json, index.parquet and the
    `shards` shards."""
    by_folder: dict[Path, set[str]] = defaultdict(set)
    for task in tasks:
        path = task.output_path(out_dir)
        by_folder[path.parent].add(path.name)
    for folder, names in by_folder.items():
        for path in staging_leftovers(folder, names):
            path.unlink(missing_ok=True)
        remove_stale_probes(folder)  # a worker killed while checking that it can write there
    remove_stale_temporaries(out_dir, {INDEX_FILE, DATASET_FILE, PARQUET_FILE,
                                       *(shard_name(n) for n in range(shards))})


def _engine(engine: str, settings: EncodeSettings, workers: int, address: str | None):
    if engine == "local":
        from vae_deploy.batch.local import LocalEngine

        return LocalEngine(settings, workers)
    from vae_deploy.batch.ray_engine import RayEngine

    return RayEngine(settings, workers, address)


def _run(tasks: list[VideoTask], out_dir: Path, layout: dict, settings: EncodeSettings, engine: str,
         workers: int, threads: int, address: str | None, progress: BatchProgress | None,
         index_format: str) -> BatchResult:
    index = BatchIndex(out_dir)
    existing = check_layout(out_dir, layout)  # again, under the folder's lock
    if existing != layout:  # a new folder, or a record from before the model and options were in it
        write_layout(out_dir, layout)
    try:
        result = _run_indexed(index, tasks, out_dir, layout, settings, engine, workers, threads, address,
                              progress)
    except BaseException:
        if existing is None and not index.entries:  # nothing was recorded: leave no layout either
            (out_dir / DATASET_FILE).unlink(missing_ok=True)
        raise
    if index_format == "parquet":
        write_parquet_index(out_dir, index.entries.values())
    return result


def _run_indexed(index: BatchIndex, tasks: list[VideoTask], out_dir: Path, record: dict,
                 settings: EncodeSettings, engine: str, workers: int, threads: int, address: str | None,
                 progress: BatchProgress | None) -> BatchResult:
    result = BatchResult(out_dir, index.path, total=len(tasks), engine=engine,
                         workers=min(workers, len(tasks)), threads=threads)
    layout = open_layout(record, out_dir, tasks, index)  # record: what dataset.json holds
    todo = layout.todo()
    _remove_leftovers(out_dir, todo, len(getattr(layout, "shards", ())))
    result.skipped = len(tasks) - len(todo)
    if progress is not None:
        progress(result.skipped, result.total)
    if not todo:
        return result
    made = _make_folders(out_dir, todo)
    try:
        with _engine(engine, settings, min(workers, len(todo)), address) as running:
            for entry in running.results(todo):
                if isinstance(entry, Fatal):
                    raise fatal_error(entry)
                entry = layout.entry(entry)
                index.record(entry)
                layout.recorded(entry)
                if entry.ok:
                    result.encoded += 1
                else:
                    result.failed.append(entry)
                if progress is not None:
                    progress(result.ok + len(result.failed), result.total)
    except WorkerDied as died:
        if died.task is not None:  # what it was writing (the other workers' videos are finished)
            _remove_leftovers(out_dir, [died.task])
        raise
    finally:
        _remove_if_empty(made)
    return result


def encode_dataset_job(sources: list[str | Path], out_dir: Path, *, options: StreamOptions | None = None,
                       model: ModelChoice = DEFAULT_MODEL, engine: str = "local", workers: int | None = None,
                       address: str | None = None, progress: BatchProgress | None = None,
                       output_format: str = "vaelat", shard_size: int | None = None,
                       index_format: str = "jsonl") -> BatchResult:
    """Encode every video of `sources` with `model` (its threads: per worker, None to split the CPUs) into
    `out_dir` (one .vaelat each at mirrored paths, or WebDataset tar shards of `shard_size` videos with
    output_format "webdataset") and index them (index.jsonl, plus index.parquet with index_format
    "parquet")."""
    options = options or StreamOptions(measure=False)
    backend, threads = model.backend, model.threads
    layout = layout_record(output_format, shard_size)
    check_index_format(index_format)
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if address is not None and engine != "ray":
        raise ConfigError("--address is for --engine ray (the address of a Ray cluster)")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; give a folder")
    tasks = collect_videos(list(sources))
    asked = options  # the tile request as given: what dataset.json records (not this machine's budget)
    if options.tile.budget is None:  # the default budget is the machine's: each worker gets its share
        share = TileRequest(options.tile.tile, default_budget() // workers)
        options = dataclasses.replace(options, tile=share)
    manifest = _check_model(model.folder, backend, options, out_dir)
    blended = any(record.mode == BLEND for name, record in tile_records(manifest).items()
                  if name.startswith("encoder"))
    layout.update(settings_record(manifest.fingerprint, manifest.kind, asked, blended_tiles=blended))
    check_layout(out_dir, layout)  # a folder of another layout or model: one line before anything is written
    if engine == "ray":
        from vae_deploy.batch.ray_engine import ray_module

        ray_module(address)  # missing Ray, an unreachable address: one line, before any output
    # A backend with stream_threads (ort-cpu) gets the CPUs split between workers; the others take
    # --threads only when it is given (Runner.thread_options)
    runner_threads = runner_class(backend).thread_options(threads, threads_per_worker(workers, None)
                                                          ).get("threads")
    settings = EncodeSettings(str(out_dir), options, ModelChoice(model.folder, backend, runner_threads))
    threads = threads_per_worker(workers, threads)
    with removing_new_folders(out_dir):  # a batch that fails before any video leaves no empty folder
        ensure_writable_dir(out_dir)
        # One batch per folder (index.py says why), locked before anything in it is read: a second batch
        # fails here, before it could take the first one's fresh index for its own and remove it.
        with FolderLock(out_dir, "another encode-dataset"):
            new_index = not (out_dir / INDEX_FILE).exists()
            try:
                return _run(tasks, out_dir, layout, settings, engine, workers, threads, address, progress,
                            index_format)
            except BaseException:
                if new_index and not read_index(out_dir / INDEX_FILE):  # nothing recorded: leave nothing
                    (out_dir / INDEX_FILE).unlink(missing_ok=True)
                raise
