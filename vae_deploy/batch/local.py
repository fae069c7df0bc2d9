"""The `local` engine: N worker processes on this machine, each with its own runner.

Workers are 'spawn' processes (a fresh interpreter each: no forked ONNX Runtime or OpenCV thread state),
each fed one video at a time over its own pipe; the parent waits on every busy worker's pipe and process
sentinel at once, so a result comes back as soon as it is ready, in any order, and a worker that dies
(kill -9, the OOM killer, a crash in native code) is seen the moment it dies, with the video it held.
(multiprocessing.Pool replaced a dead worker silently and lost its task: the batch then waited for ever.)
A death ends the batch: no new video is handed out, the other workers finish the videos they hold (they are
recorded), and WorkerDied names the dead worker's pid, how it died and its video. Redoing that video would
only repeat an out-of-memory kill; a rerun does it and every video not finished. Each worker builds one
VideoEncoder, which opens its runner on the first video (a runner that cannot open comes back as a FATAL
result); only the parent writes the index.

Stopping: workers ignore SIGINT (a Ctrl-C in a terminal reaches the whole process group; the parent alone
decides). While a video is in progress SIGTERM raises Terminated, so the parent's stop (SIGTERM to each
worker) ends that video through the pipeline's interrupt path: its staging file is removed and nothing
reaches its output name. Between videos SIGTERM keeps its default action and ends the worker at once: a
Python handler runs only in the main thread, and the signal landing on one of ONNX Runtime's threads, or
in the pipe's own code while the worker waits for its next video, would leave the worker half-stopped or
print a traceback. What finished is already in the index. A stop that lands in a weakref or garbage
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
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from vae_deploy.batch.index import IndexEntry
from vae_deploy.batch.sources import VideoTask
from vae_deploy.batch.worker import EncodeSettings, Fatal, VideoEncoder, WorkerDied

_encoder: VideoEncoder | None = None  # this worker process's encoder
_on_sigterm = signal.SIG_DFL  # interrupts' handler: SIGTERM raises Terminated (set by _init_worker)
_terminated = False  # a SIGTERM reached this worker during a video
REDELIVER_S = 0.01  # a dropped stop comes again this much later (see the module docstring)
STOP_WAIT_S = 60.0  # how long a stopped worker gets to end its video before it is killed


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


def _encode(task: VideoTask) -> IndexEntry | Fatal:
    signal.signal(signal.SIGTERM, _stop_video)
    signal.signal(signal.SIGALRM, _stop_video)
    try:
        try:
            result = _encoder.encode(task)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # runs a SIGTERM still pending first
    except KeyboardInterrupt:  # stopped: the video's staging file is gone; end quietly, no traceback
        os._exit(128 + signal.SIGTERM)
    except BaseException:
        # A stop that landed inside a library comes out as that library's error: ONNX Runtime's import
        # turns it into "ImportError: initialization failed". The stop, not the error, is what happened.
        if _terminated:
            os._exit(128 + signal.SIGTERM)
        raise
    if _terminated:  # the interrupt became another error while the video's files were removed (a full disk)
        os._exit(128 + signal.SIGTERM)
    return result


def _worker_main(settings: EncodeSettings, conn: Connection) -> None:
    """A worker process: videos in, index entries out, until the parent sends None or goes away."""
    _init_worker(settings)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        try:
            conn.send(_encode(task))
        except BrokenPipeError:  # the parent is gone
            return


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: Connection
    task: VideoTask | None = None  # the video it holds


class LocalEngine:
    name = "local"

    def __init__(self, settings: EncodeSettings, workers: int):
        self.settings, self.workers = settings, workers
        self._workers: list[_Worker] = []

    def __enter__(self) -> LocalEngine:
        context = multiprocessing.get_context("spawn")
        for _ in range(self.workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker_main, args=(self.settings, child_end), daemon=True)
            process.start()
            child_end.close()
            self._workers.append(_Worker(process, parent_end))
        return self

    def results(self, tasks: Iterable[VideoTask]) -> Iterator[IndexEntry | Fatal]:
        """Each task's result as it finishes (any order); WorkerDied once the videos in progress are done
        when a worker died."""
        pending, died = list(reversed(list(tasks))), None
        for worker in self._workers:
            if pending and died is None:
                died = self._hand_out(worker, pending.pop(), pending)
        while busy := [w for w in self._workers if w.task is not None]:
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn in ready:
                    try:
                        result = worker.conn.recv()
                    except (EOFError, OSError):  # it died before a whole result was sent
                        result = None
                    if result is not None:
                        worker.task = None
                        yield result
                        if pending and died is None:
                            died = self._hand_out(worker, pending.pop(), pending)
                        continue
                if worker.process.sentinel in ready or worker.conn in ready:  # dead (its pipe closed)
                    worker.process.join()
                    died = died or WorkerDied(f"worker pid {worker.process.pid}", worker.process.exitcode,
                                              worker.task)
                    worker.task = None
        if died is not None:
            raise died

    def _hand_out(self, worker: _Worker, task: VideoTask, pending: list[VideoTask]) -> WorkerDied | None:
        """Send `task` to `worker`; WorkerDied (the task back in `pending`) when it died between videos."""
        if worker.process.is_alive():
            try:
                worker.conn.send(task)
                worker.task = task
                return None
            except OSError:
                worker.process.join()
        pending.append(task)
        return WorkerDied(f"worker pid {worker.process.pid}", worker.process.exitcode, None)

    def __exit__(self, exc_type, *exc) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            if exc_type is None:
                try:
                    worker.conn.send(None)  # no more videos
                except OSError:
                    pass
            elif worker.process.exitcode is None:  # an interrupt or an error: stop the video in progress
                worker.process.terminate()
        for worker in workers:
            worker.process.join(STOP_WAIT_S)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
