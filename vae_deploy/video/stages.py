"""Three overlapping stages joined by bounded queues: produce (a thread) -> transform (the calling thread)
-> consume (a thread).

Reading and decoding a video, running the model and writing the results overlap, while the queues (of
`depth` items each) bound how much is in flight, so memory does not grow with the video's length. OpenCV,
ONNX Runtime and most numpy work release the GIL, so the stages truly run at the same time.

The model runs in the calling (main) thread so that Ctrl-C (KeyboardInterrupt, delivered to the main thread)
stops it between chunks. On any error or interrupt the other stages stop after their current item; the first
exception is re-raised in the caller once both threads have ended, so the caller can close its outputs
knowing no thread still writes to them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

A = TypeVar("A")
B = TypeVar("B")

_END = object()  # end-of-stream marker
_POLL_S = 0.1  # how often a blocked put/get looks at the stop flag


class _Stages:
    def __init__(self, depth: int):
        self.stop = threading.Event()
        self.inbox: queue.Queue = queue.Queue(depth)
        self.outbox: queue.Queue = queue.Queue(depth)
        self.errors: list[BaseException] = []

    def put(self, q: queue.Queue, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue) -> Any:
        while not self.stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _END

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.stop.set()


def run_stages(produce: Iterable[A], transform: Callable[[A], B], consume: Callable[[B], None],
               depth: int = 2) -> None:
    """Run every item of `produce` through `transform` and `consume`, the three overlapping (docstring)."""
    stages = _Stages(max(1, depth))

    def producer() -> None:
        iterator = iter(produce)
        try:
            for item in iterator:
                if not stages.put(stages.inbox, item):
                    return
            stages.put(stages.inbox, _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            stages.fail(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator: run its cleanup (release a capture) in this thread
                close()

    def consumer() -> None:
        try:
            while True:
                item = stages.get(stages.outbox)
                if item is _END:
                    return
                consume(item)
        except BaseException as exc:  # noqa: BLE001
            stages.fail(exc)

    threads = [threading.Thread(target=producer, name="stage-read", daemon=True),
               threading.Thread(target=consumer, name="stage-write", daemon=True)]
    try:
        # Started inside the try: a stop signal that lands between the two starts (Thread.start waits, and
        # the signal's exception is raised there) still stops and joins the thread already running, which
        # would otherwise go on decoding while the interpreter exits (a C++ abort, not exit 143).
        for thread in threads:
            thread.start()
        while True:
            item = stages.get(stages.inbox)
            if item is _END:
                break
            if not stages.put(stages.outbox, transform(item)):
                break
        stages.put(stages.outbox, _END)
    except BaseException as exc:
        stages.fail(exc)
    _join_all([thread for thread in threads if thread.ident is not None], stages)  # the ones started
    if stages.errors:
        raise stages.errors[0]


def _join_all(threads: list[threading.Thread], stages: _Stages) -> None:
    """Wait for both threads, so no stage still writes when the caller closes its outputs. A Ctrl-C
    while waiting (the writer draining the last chunks) stops them after their current item instead."""
    while any(t.is_alive() for t in threads):
        try:
            for thread in threads:
                thread.join(_POLL_S)
        except KeyboardInterrupt as exc:
            stages.fail(exc)
