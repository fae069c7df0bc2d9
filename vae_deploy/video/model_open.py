"""Opening a model folder for streaming: the packaged default model when none is named, with the backend's
streaming options. Below video/jobs.py (the commands as functions), so that FrameStream and the batch
workers open a model as the commands do without importing the commands.

A model may also run elsewhere: a `CodecProvider` stands in the pipeline where a local Runner would (it
knows the model as its manifest would give it, and opens the codec of a video), and a `ModelServer` opens
one for a job. The serve layer implements both over `vae-deploy serve` sessions (serve/remote_codec.py);
the CLI hands a job its ModelServer (`--server`), since this layer sits below serve."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vae_deploy.runtime.latent_space import NORMALIZED
from vae_deploy.runtime.registry import DEFAULT_BACKEND, load_runner, runner_class
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.tile_plan import TileRequest
from vae_deploy.video.default_model import resolve_model
from vae_deploy.video.latent_codec import LatentCodec, VideoModelInfo


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


# ---------------------------------------------------------------- a model that runs elsewhere


class CodecProvider(ABC):
    """A model that opens its own codecs, standing in the pipeline where a local Runner would (a model on a
    `vae-deploy serve` server: serve/remote_codec.py). `name` names it in reports, as a runner's backend
    name does; `video_info` is the model as its manifest would give it; `open_codec` gives the codec of one
    video, an object with LatentCodec's `encode`, `decode` and `latent_space`."""

    name: str
    video_info: VideoModelInfo

    @abstractmethod
    def open_codec(self, info: VideoModelInfo, latent_space: str = NORMALIZED,
                   tiling: TileRequest | None = None,
                   model_size: tuple[int, int] | None = None) -> LatentCodec:
        """One video's codec (what LatentCodec(runner, ...) is for a local runner)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the provider holds (its connections)."""

    def __enter__(self) -> CodecProvider:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ModelServer(ABC):
    """Where a job's model runs instead of a local folder (`--server`): `connect` opens what one job needs."""

    url: str  # what the user named, for messages and reports

    @abstractmethod
    def connect(self, modes: Sequence[str], *, fingerprint: str | None = None,
                latent_space: str = NORMALIZED) -> CodecProvider:
        """A provider with a session per mode ("encode", "decode"), their latents in `latent_space`; with
        `fingerprint`, a server whose model is another is refused."""

    @abstractmethod
    def check_options(self, tiling: TileRequest | None) -> None:
        """Refuse, before any connection, what the server cannot do for a job (one ConfigError line)."""


def model_info(runner: Runner | CodecProvider) -> VideoModelInfo:
    """The video model behind a runner (read from its manifest) or a codec provider (as it was told)."""
    if isinstance(runner, CodecProvider):
        return runner.video_info
    return VideoModelInfo.from_manifest(runner.manifest)


def open_codec(runner: Runner | CodecProvider, info: VideoModelInfo, latent_space: str = NORMALIZED,
               tiling: TileRequest | None = None, model_size: tuple[int, int] | None = None) -> LatentCodec:
    """One video's codec: a LatentCodec over a local runner, or the one a codec provider opens."""
    if isinstance(runner, CodecProvider):
        return runner.open_codec(info, latent_space, tiling, model_size)
    return LatentCodec(runner, info, latent_space, tiling, model_size)
