"""Running the app: the model loaded once, the socket bound by us (so a port in use or a bad address is one
line before anything starts), uvicorn serving it, and the graceful stop.

SIGTERM (or Ctrl-C) does not stop uvicorn at once: the app refuses new sessions, every open session gets its
chunk in flight answered and is then closed with code 1001 and a reason, and only when no session is left
(or `drain_timeout` has passed) does uvicorn shut down; the process then exits 0. A second signal stops
sooner (uvicorn closes the sessions left with 1012), a third at once. uvicorn re-raises a signal it
handled, which would end the process with 143; the stop is ours here, so the signal is not recorded for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import sys
import time
from pathlib import Path

import uvicorn

from vae_deploy.errors import ConfigError
from vae_deploy.runtime.registry import load_runner, runner_class
from vae_deploy.runtime.runner import Runner
from vae_deploy.serve.app import ServeConfig, ServeState, create_app
from vae_deploy.video.default_model import resolve_model
from vae_deploy.video.model_open import runner_options

DRAIN_TIMEOUT = 30.0  # seconds the stop waits for sessions to finish their chunk in flight


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_exposure(host: str, token: str | None) -> None:
    """Listening beyond this machine needs a token: a session runs the model on the server's CPU or GPU."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} listens beyond this machine: give --token SECRET (clients then "
                          f"send it), or keep the default --host 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # a restart binds past TIME_WAIT; a port another process listens on is still refused
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # at once: a client may connect before uvicorn starts, and waits in the backlog
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return sock


def open_served_model(model: Path | None, backend: str, threads: int | None) -> Runner:
    """The model as `open_model` opens it for a stream, but for ort-cpu with glibc's own mmap threshold
    (`mmap_threshold` 0) instead of the streaming default of 1 MiB (runtime/cpu_memory.py). Under that
    default every tensor of 1 MiB or more is a fresh mapping, page-faulted in at each call; a round's
    batched call has k times larger tensors, so more of them cross it, and the packaged model's decoder
    (one latent frame a call) ran 0.70x to 0.83x as fast batched as its streams one by one; with glibc's
    own threshold 1.00x to 1.02x (benchmarks/results/serve_sessions.md). A server is one long-lived
    process whose rounds reuse the same sizes, so the heap it keeps is reused rather than grown."""
    options = runner_options(backend, threads)
    if "mmap_threshold" in getattr(runner_class(backend), "OPTIONS", {}):
        options["mmap_threshold"] = 0
    return load_runner(resolve_model(model), backend, **options)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServeState, drain_timeout: float):
        super().__init__(config)
        self.state, self.drain_timeout = state, drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:  # a signal handler: the loop is told, not used
        if self._draining or self._loop is None:
            # a second signal: uvicorn's own shutdown now (open sessions get 1012); a third: at once
            self.force_exit = self.should_exit
            self.should_exit = True
            return
        self._draining = True
        print(f"stopping ({signal.Signals(sig).name}): finishing the chunks in flight", file=sys.stderr,
              flush=True)
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self.state.begin_stop()
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout
        while self.state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.should_exit = True


def serve(model: Path | None, host: str, port: int, config: ServeConfig, backend: str,
          threads: int | None = None, drain_timeout: float = DRAIN_TIMEOUT) -> None:
    """Load the model, bind, serve until stopped (module docstring)."""
    check_exposure(host, config.token)
    if model is not None and not model.is_dir():
        raise ConfigError(f"model folder not found: {model}")
    sock = bind(host, port)  # first: a port in use is refused before the model loads
    try:
        runner = open_served_model(model, backend, threads)
        try:
            state = ServeState(runner, config)
        except BaseException:
            runner.close()
            raise
    except BaseException:
        sock.close()
        raise
    shown = f"[{host}]" if ":" in host else host
    bound = sock.getsockname()[1]
    print(f"serving {model or 'the packaged model'} on http://{shown}:{bound} (sessions: "
          f"ws://{shown}:{bound}/session)", file=sys.stderr, flush=True)
    uv_config = uvicorn.Config(
        create_app(state), log_level="warning", access_log=False, lifespan="on",
        ws_max_size=config.max_message_bytes,  # larger messages are refused by the protocol (close 1009)
        ws_max_queue=2,  # messages read ahead of the session per connection: back-pressure beyond them
        ws_per_message_deflate=False,  # arrays barely compress, and a compressed bomb is not our problem then
        timeout_graceful_shutdown=5)
    _DrainingServer(uv_config, state, drain_timeout).run(sockets=[sock])
