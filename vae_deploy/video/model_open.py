"""Opening a model folder for streaming: the packaged default model when none is named, with the backend's
streaming options. Below video/jobs.py (the commands as functions), so that FrameStream and the batch
workers open a model as the commands do without importing the commands."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vae_deploy.runtime.registry import DEFAULT_BACKEND, load_runner, runner_class
from vae_deploy.runtime.runner import Runner
from vae_deploy.video.default_model import resolve_model


def runner_options(backend: str, threads: int | None = None) -> dict:
    """Runner options for streaming with `backend`; `threads` None picks the pipeline's default.

    A backend that declares `stream_threads` (ort-cpu) gets an intra-op thread per CPU and its
    `stream_options` (ort-cpu: spinning off). The reading and writing stages need a core too: ORT's
    spinning threads fought them for it (a chunk ran about 2x slower than one thread on the 2-core machine
    of benchmarks/results/pipeline_speed.md), but threads that sleep when idle leave it to them. Measured
    side by side on 2 CPUs (benchmarks/results/stream_threads.md): 2 threads without spinning were the
    fastest for both the packaged model's `run` and Wan's `decode`, ahead of one thread and of 2 spinning.
    """
    return runner_class(backend).thread_options(threads, os.cpu_count() or 1)


@dataclass(frozen=True)
class ModelChoice:
    """Which model a job streams and how: the model folder (None: the packaged default model), the backend
    and its intra-op threads (None: the job's default, runner_options)."""

    folder: Path | None = None
    backend: str = DEFAULT_BACKEND
    threads: int | None = None


DEFAULT_MODEL = ModelChoice()  # the packaged default model on the default backend


def open_model(choice: ModelChoice) -> Runner:
    """The chosen model folder with its backend, set up for streaming."""
    return load_runner(resolve_model(choice.folder), choice.backend,
                       **runner_options(choice.backend, choice.threads))
