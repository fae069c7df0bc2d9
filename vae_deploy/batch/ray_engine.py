"""The `ray` engine: an actor pool, one VideoEncoder (one runner) per actor.

Without --address a local Ray starts for this batch (its logical CPUs set to at least workers x threads,
so every actor is placed) and stops with it; with --address the batch joins that cluster. Every actor
writes its .vaelat files into the output folder itself, so on a cluster that folder (and the videos) must
be on storage every node sees, and vae-deploy must be installed on every node. Actors ask for
`num_cpus = threads`, and `num_gpus = 1` with a CUDA backend. Results come back to the caller, which
alone writes the index. Ray is the optional extra `vae-deploy[ray]`.

An actor that dies (kill -9, the OOM killer, its node lost) ends the batch as a dead local worker does
(local.py): no new video is handed out, the other actors finish the videos they hold (recorded in the
index), and WorkerDied names the dead actor's pid and video in one line. (ray.util.ActorPool raised Ray's
own multi-line error at once and dropped the other actors' videos.)
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator

from vae_deploy.batch.index import IndexEntry
from vae_deploy.batch.sources import VideoTask
from vae_deploy.batch.worker import EncodeSettings, Fatal, VideoEncoder, WorkerDied
from vae_deploy.errors import ConfigError, VaeDeployError
from vae_deploy.runtime.registry import runner_class

INSTALL_HINT = "pip install 'vae-deploy[ray]'"
CONNECT_TIMEOUT_S = 10.0  # how long an --address gets to accept a TCP connection
# `ray start` turns token authentication on (Ray >= 2.59 for a local cluster); a driver sends the token
# only when RAY_AUTH_MODE=token is set in its environment.
TOKEN_HINT = ("the cluster asks for its authentication token: set RAY_AUTH_MODE=token, with the token in "
              "~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (Ray's token authentication docs)")


def ray_module(address: str | None = None):
    """Ray, imported (one line naming the extra when it is missing), and `address` checked reachable."""
    # Ray's C++ core logs each failed retry of a connection as a warning on stderr: errors only.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
    except ImportError as err:
        raise VaeDeployError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from err
    if address is not None:
        check_address(address)
    return ray


def check_address(address: str) -> None:
    """One line within CONNECT_TIMEOUT_S when `address` (host:port, or ray://host:port) accepts no
    connection; ray.init itself would retry for minutes. "auto" and "local" are Ray's to resolve."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--address {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://head:10001)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise VaeDeployError(f"cannot reach the Ray cluster at {address}: {reason}") from exc


def _asks_for_token(exc: BaseException) -> bool:
    """Whether the cluster refused us for want of its token (Ray wraps the AuthenticationError in a
    ConnectionError, and its text in a RuntimeError's, by version)."""
    while exc is not None:
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the block (C++ code writes there, not to sys.stderr)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Actor:
    def __init__(self, settings: EncodeSettings):
        self.encoder = VideoEncoder(settings)

    def encode(self, task: VideoTask) -> IndexEntry | Fatal:
        return self.encoder.encode(task)

    def pid(self) -> int:
        return os.getpid()


class RayEngine:
    name = "ray"

    def __init__(self, settings: EncodeSettings, workers: int, address: str | None = None):
        self.settings, self.workers, self.address = settings, workers, address
        self._ray = ray_module()
        self._actors = {}  # actor -> its process id

    def __enter__(self) -> RayEngine:
        ray = self._ray
        threads = self.settings.model.threads or 1
        if self.address is not None:
            try:
                with _quiet_stderr():  # Ray's C++ core prints a line per failed retry: we print one
                    ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError... by version
                reason = TOKEN_HINT if _asks_for_token(exc) else str(exc)
                raise VaeDeployError(f"cannot connect to the Ray cluster at {self.address}: {reason}") \
                    from exc
        else:
            # address="local": a Ray of its own even when one already runs here (ray.init() would join
            # that one, and refuse num_cpus); joining a running Ray is what --address is for.
            with _quiet_stderr():  # Ray's C++ core says which log level it took from the environment
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, self.workers * threads),
                         include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        gpus = 1 if runner_class(self.settings.model.backend).uses_gpu else 0  # the runner class declares it
        actor = ray.remote(num_cpus=threads, num_gpus=gpus)(_Actor)
        actors = [actor.remote(self.settings) for _ in range(self.workers)]
        self._actors = dict(zip(actors, ray.get([a.pid.remote() for a in actors]), strict=True))  # -> pid
        return self

    def results(self, tasks: Iterable[VideoTask]) -> Iterator[IndexEntry | Fatal]:
        """Each task's result as it finishes (any order); WorkerDied once the videos in progress are done
        when an actor died."""
        ray = self._ray
        pending, died = list(reversed(list(tasks))), None
        running = {}  # a result's object ref -> (its actor, its task)
        for actor in self._actors:
            if pending:
                task = pending.pop()
                running[actor.encode.remote(task)] = (actor, task)
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, task = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError:  # ActorDiedError, ActorUnavailableError...
                died = died or WorkerDied(f"Ray actor pid {self._actors[actor]}",
                                          "killed or crashed: out of memory?", task)
                continue
            yield result
            if pending and died is None:
                task = pending.pop()
                running[actor.encode.remote(task)] = (actor, task)
        if died is not None:
            raise died

    def __exit__(self, *exc) -> None:
        self._actors = {}
        self._ray.shutdown()
