"""The `local` engine: N worker processes on this machine, each with its own runner.

multiprocessing.Pool with the 'spawn' context (a fresh interpreter per worker: no forked ONNX Runtime or
OpenCV thread state). Each worker builds one VideoEncoder in its initializer and opens its runner on its
first video (opening it in the initializer itself would make a pool whose initializer fails restart
workers forever; a runner that cannot open comes back as a FATAL result instead). Videos go out one at a
time and results come back to the parent as they finish, in any order; only the parent writes the index.

Stopping: workers ignore SIGINT (a Ctrl-C in a terminal reaches the whole process group; the parent alone
decides). While a video is in progress SIGTERM raises Terminated, so `Pool.terminate()` (SIGTERM to each
worker) ends that video through the pipeline's interrupt path: its staging file is removed and nothing
reaches its output name. Between videos SIGTERM keeps its default action and ends the worker at once: a
Python handler runs only in the main thread, and an idle worker's main thread waits on the pool's task
queue lock, which `terminate()` itself holds; the signal landing on one of ONNX Runtime's threads would
leave the worker (and the parent joining it) waiting for ever, and one landing in the pool's own code
would print a traceback. What finished is already in the index. A stop that lands in a weakref or garbage
collection callback is one Python prints ("Exception ignored in ...") and drops: the worker's unraisable
hook delivers it again 10 ms later (SIGALRM, handled like SIGTERM during a video), so the video still ends
through its interrupt path and nothing is printed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Iterator

from vae_deploy.batch.sources import VideoTask
from vae_deploy.batch.worker import EncodeSettings, VideoEncoder

_encoder: VideoEncoder | None = None  # this worker process's encoder
_on_sigterm = signal.SIG_DFL  # interrupts' handler: SIGTERM raises Terminated (set by _init_worker)
_terminated = False  # a SIGTERM reached this worker during a video
REDELIVER_S = 0.01  # a dropped stop comes again this much later (see the module docstring)


def _init_worker(settings: EncodeSettings) -> None:
    global _encoder, _on_sigterm
    from vae_deploy import interrupts

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.install_sigterm_handler()
    _on_sigterm = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # idle until the first video (see the module docstring)
    sys.unraisablehook = _redeliver_dropped_stop
    _encoder = VideoEncoder(settings)


def _redeliver_dropped_stop(unraisable) -> None:
    if _terminated and isinstance(unraisable.exc_value, KeyboardInterrupt):
        signal.setitimer(signal.ITIMER_REAL, REDELIVER_S)  # SIGALRM -> _stop_video, outside the callback
        return
    sys.__unraisablehook__(unraisable)


def _stop_video(signum, frame) -> None:
    global _terminated
    _terminated = True
    _on_sigterm(signum, frame)


def _encode(task: VideoTask) -> dict:
    signal.signal(signal.SIGTERM, _stop_video)
    signal.signal(signal.SIGALRM, _stop_video)
    try:
        try:
            result = _encoder.encode(task)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # runs a SIGTERM still pending first
    except KeyboardInterrupt:  # terminate(): the video's staging file is gone; end quietly, no traceback
        os._exit(128 + signal.SIGTERM)
    if _terminated:  # the interrupt became another error while the video's files were removed (a full disk)
        os._exit(128 + signal.SIGTERM)
    return result


class LocalEngine:
    name = "local"

    def __init__(self, settings: EncodeSettings, workers: int):
        self.settings, self.workers = settings, workers
        self._pool = None

    def __enter__(self) -> LocalEngine:
        context = multiprocessing.get_context("spawn")
        self._pool = context.Pool(self.workers, _init_worker, (self.settings,))
        return self

    def results(self, tasks: Iterable[VideoTask]) -> Iterator[dict]:
        """Each task's result as it finishes (any order)."""
        yield from self._pool.imap_unordered(_encode, list(tasks), chunksize=1)

    def __exit__(self, exc_type, *exc) -> None:
        pool, self._pool = self._pool, None
        if exc_type is None:
            pool.close()
        else:  # an interrupt or a fatal error: stop the videos in progress
            pool.terminate()
        pool.join()
