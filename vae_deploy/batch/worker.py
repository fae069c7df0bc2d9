"""One video of a batch, encoded exactly as `vae-deploy encode` does it (video/jobs.py encode_job): the
same runner options, the same StreamOptions, the same pipeline (video/pipeline.py encode_video), so a
batch's files are byte-identical to a serial loop of `vae-deploy encode`. Each worker (a process of the
local engine, an actor of the ray engine) holds one VideoEncoder, which opens its runner once, on its first
video, and keeps it for the rest.

The pipeline writes to a staging name beside the output (`.<name>.<token>.batch.vaelat`) that is renamed
onto the output only when the video is complete: an interrupted video (Ctrl-C, SIGTERM) publishes a
shortened but valid file under the name it was given, and that name must never be the final one. A video
that fails is an entry with its error; the batch goes on. Two failures are fatal instead, because every
video would fail the same way: a runner that cannot open, and an output folder where nothing can be written
(a full disk, a quota, a read-only filesystem: ENOSPC, EDQUOT, EROFS, under whatever error carried them).
The result says so, naming --out as given rather than a staging name, and the engine's caller stops the
batch with that one line. A failed video leaves no staging file.

A worker killed outright (kill -9, the OOM killer) removes nothing: its staging file, or the latent writer's
temporary file of it, stays. Only the batch holding the folder's lock, which owns every output of its
layout, removes them (staging_leftovers: the exact names made for one of its outputs, nothing else), when
a worker dies and at the start of every run. Each entry also records its source's identity
(sources.source_identity), so that a rerun redoes a video replaced under the same name.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from vae_deploy.batch.index import FAILED, OK, IndexEntry
from vae_deploy.batch.sources import LATENT_SUFFIX, VideoTask, source_identity
from vae_deploy.errors import OutputError, VaeDeployError
from vae_deploy.files import FOLDER_UNWRITABLE_ERRNOS, files_named
from vae_deploy.runtime.latents import LatentReader
from vae_deploy.runtime.runner import Runner
from vae_deploy.video.model_open import DEFAULT_MODEL, ModelChoice, open_model
from vae_deploy.video.pipeline import StreamOptions, encode_video
from vae_deploy.video.sources import open_source


@dataclass(frozen=True)
class Fatal:
    """A worker's result when the batch must stop (no runner, nothing can be written): why, and whether it
    is because the output could not be written (OutputError's exit)."""

    message: str
    output_unwritable: bool = False


@dataclass
class EncodeSettings:
    """What every worker needs: picklable, sent once to each worker."""

    out_dir: str
    options: StreamOptions
    model: ModelChoice = DEFAULT_MODEL  # its threads: per worker


def _staging(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.batch{path.suffix}")


# A staging name, and the latent writer's temporary file of it (files.AtomicFile: .<name>.<pid>-<hex>.part)
_STAGING = re.compile(r"\.(?P<stem>.+)\.[0-9a-f]{8}\.batch" + re.escape(LATENT_SUFFIX))
_STAGING_TEMPORARY = re.compile(r"\.\.(?P<stem>.+)\.[0-9a-f]{8}\.batch\.(\d+-)?[0-9a-f]{12}\.part"
                                + re.escape(LATENT_SUFFIX))


def staging_leftovers(folder: Path, outputs: set[str]) -> list[Path]:
    """The staging files (and their temporary files) in `folder` made for one of `outputs` (file names in
    `folder`): what workers killed outright left behind. Nothing else matches."""

    def staged(name: str) -> bool:
        match = _STAGING.fullmatch(name) or _STAGING_TEMPORARY.fullmatch(name)
        return bool(match) and match["stem"] + LATENT_SUFFIX in outputs

    return files_named(folder, staged)


class WorkerDied(VaeDeployError):
    """A worker process or actor died outright while the batch ran (module docstring of local.py)."""

    exit_code = 1

    def __init__(self, worker: str, how: int | str | None, task: VideoTask | None):
        if isinstance(how, int) and how < 0:  # multiprocessing's exitcode: -N for signal N
            how = f"signal {-how}, killed: out of memory?" if -how == signal.SIGKILL else \
                f"signal {-how}, {signal.Signals(-how).name}"
        elif isinstance(how, int):
            how = f"exit code {how}"
        doing = f"while encoding {task.source}" if task is not None else "between videos"
        super().__init__(f"{worker} died ({how or 'unknown cause'}) {doing}; finished videos are kept; "
                         f"rerun to continue")
        self.task = task


def fatal_error(result: Fatal) -> VaeDeployError:
    """The error that stops the batch on a Fatal result (OutputError, exit 1, when nothing can be written)."""
    return (OutputError if result.output_unwritable else VaeDeployError)(result.message)


def _unwritable(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, or what an OutputError or VaeDeployError was raised from, even
    `from None`) when it says the output folder takes no more bytes; None for any other failure."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:  # (a chain may loop back on itself)
        if isinstance(exc, OSError) and exc.errno in FOLDER_UNWRITABLE_ERRNOS:
            return exc
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return None


class VideoEncoder:
    def __init__(self, settings: EncodeSettings):
        self.settings = settings
        self._runner: Runner | None = None

    def _open(self) -> Runner:
        if self._runner is None:
            self._runner = open_model(self.settings.model)
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def encode(self, task: VideoTask) -> IndexEntry | Fatal:
        """The index entry of `task` once encoded (or failed); Fatal when the batch must stop."""
        try:
            runner = self._open()
        except VaeDeployError as exc:
            return Fatal(str(exc))
        started = time.perf_counter()
        entry = IndexEntry(task.source, task.output, status=FAILED)
        out = task.output_path(Path(self.settings.out_dir))
        try:
            identity = source_identity(task.source)  # before reading: a file replaced meanwhile is redone
            entry = dataclasses.replace(entry, **identity)
            report, header = self._write(runner, task, out)
            entry = dataclasses.replace(entry, status=OK, frames=report.frames, truncated=report.truncated,
                                        latent_shape=[header.latent_frames, *header.latent_shape])
        except Exception as exc:  # OpenCV's own errors, an OSError: this video fails, the batch goes on
            unwritable = _unwritable(exc)
            if unwritable is not None:  # ... unless no video can be written
                return Fatal(f"cannot write {self.settings.out_dir}: {os.strerror(unwritable.errno).lower()}",
                             output_unwritable=True)
            entry.error = str(exc) if isinstance(exc, VaeDeployError) else f"{type(exc).__name__}: {exc}"
        entry.seconds = round(time.perf_counter() - started, 4)
        return entry

    def _write(self, runner: Runner, task: VideoTask, out: Path):
        """Encode `task` to a staging name, rename it onto `out`; (the stream report, the file header)."""
        # (a folder made here stays when the video fails: removing it could pull it from under another
        # worker writing a video into the same folder)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging(out)
        try:
            with open_source(task.source) as frames:
                report = encode_video(runner, frames, staging, self.settings.options)
            if report.interrupted:
                raise KeyboardInterrupt
            header = LatentReader(staging).header  # what was written reads back whole (checksum included)
            os.replace(staging, out)
        finally:
            staging.unlink(missing_ok=True)  # a failed or interrupted video's file (gone once renamed)
        return report, header
