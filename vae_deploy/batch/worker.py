"""One video of a batch, encoded exactly as `vae-deploy encode` does it (video/jobs.py encode_job): the
same runner options, the same StreamOptions, the same pipeline (video/pipeline.py encode_video), so a
batch's files are byte-identical to a serial loop of `vae-deploy encode`. Each worker (a process of the
local engine, an actor of the ray engine) holds one VideoEncoder, which opens its runner once, on its first
video, and keeps it for the rest.

The pipeline writes to a staging name beside the output (`.<name>.<token>.batch.vaelat`) that is renamed
onto the output only when the video is complete: an interrupted video (Ctrl-C, SIGTERM) publishes a
shortened but valid file under the name it was given, and that name must never be the final one. A video
that fails is an entry with its error; the batch goes on. A runner that cannot open is fatal (every video
would fail the same way): the result says so and the engine's caller stops the batch.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from vae_deploy.batch.index import FAILED, OK
from vae_deploy.batch.sources import VideoTask
from vae_deploy.errors import VaeDeployError
from vae_deploy.runtime.latents import LatentReader
from vae_deploy.runtime.registry import DEFAULT_BACKEND
from vae_deploy.runtime.runner import Runner
from vae_deploy.video.io import open_source
from vae_deploy.video.pipeline import StreamOptions, encode_video

FATAL = "fatal"  # a result key: the runner could not be opened; the value is the message


@dataclass
class EncodeSettings:
    """What every worker needs: picklable, sent once to each worker."""

    out_dir: str
    options: StreamOptions
    model: str | None = None
    backend: str = DEFAULT_BACKEND
    threads: int | None = None  # per worker


def _staging(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.batch{path.suffix}")


class VideoEncoder:
    def __init__(self, settings: EncodeSettings):
        self.settings = settings
        self._runner: Runner | None = None

    def _open(self) -> Runner:
        if self._runner is None:
            from vae_deploy.video.jobs import open_model

            s = self.settings
            self._runner = open_model(None if s.model is None else Path(s.model), s.backend, s.threads)
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def encode(self, task: VideoTask) -> dict:
        """The index entry of `task` once encoded (or failed); {FATAL: message} when no runner opens."""
        try:
            runner = self._open()
        except VaeDeployError as exc:
            return {FATAL: str(exc)}
        started = time.perf_counter()
        entry = {"source": task.source, "output": task.output, "status": FAILED, "frames": 0,
                 "latent_shape": None, "seconds": 0.0, "error": None, "truncated": False}
        out = task.output_path(Path(self.settings.out_dir))
        staging = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = _staging(out)
            with open_source(task.source) as frames:
                report = encode_video(runner, frames, staging, self.settings.options)
            if report.interrupted:
                raise KeyboardInterrupt
            header = LatentReader(staging).header  # what was written reads back whole (checksum included)
            os.replace(staging, out)
            staging = None
            entry.update(status=OK, frames=report.frames, truncated=report.truncated,
                         latent_shape=[header.latent_frames, *header.latent_shape])
        except VaeDeployError as exc:
            entry["error"] = str(exc)
        except Exception as exc:  # OpenCV's own errors, an OSError: this video fails, the batch goes on
            entry["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if staging is not None:
                staging.unlink(missing_ok=True)
        entry["seconds"] = round(time.perf_counter() - started, 4)
        return entry
