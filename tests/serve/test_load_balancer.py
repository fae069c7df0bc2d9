"""Replicas behind a real load balancer: two `vae-deploy serve` processes on 127.0.0.1 and nginx (Debian's
package) in front of them as a round-robin WebSocket reverse proxy, all on loopback. A session is one
connection, so the balancer keeps it on one replica for its whole life: sessions land on both replicas, and
each session's outputs equal the local codec's (its causal state stayed where its chunks went).

nginx runs from a config generated in tmp_path (its pid file, logs and temp folders there, `daemon off;`, as
the current user); no system file is read or written. The module skips when nginx is not installed
(.ci/run installs it with apt-get)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from serve_support import ServerProcess, chunks_of, clip, metric

from vae_deploy.serve.client import connect

START_TIMEOUT = 20.0
SESSIONS = 4  # round robin over two replicas: two sessions each


def _nginx() -> str | None:
    # Debian installs it in /usr/sbin, which a non-root PATH may lack
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_config(root: Path, port: int, upstreams: list[int]) -> str:
    """A self-contained nginx.conf: every path under `root`, one worker, round robin over `upstreams`."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / sub).mkdir(exist_ok=True)
    # a root master drops its workers to `nobody` unless told otherwise: they could not use root's tmp_path
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstreams)
    return f"""
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream replicas {{
{servers}
    }}
    # a WebSocket handshake is forwarded as one (Upgrade: websocket), anything else as plain HTTP/1.1
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


class NginxProcess:
    """nginx in the foreground on a free port of 127.0.0.1, stopped by SIGTERM (killed if it lingers)."""

    def __init__(self, binary: str, root: Path, upstreams: list[int]):
        self.root, self.port = root, _free_port()
        conf = root / "nginx.conf"
        conf.write_text(nginx_config(root, self.port, upstreams))
        # -e: the log for what happens before the config is read (else the compiled-in /var/log/nginx path)
        command = [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not answer in {START_TIMEOUT:g} s:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/session"

    def log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no error log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: the master stops its worker too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def replicas(serve_model, request):
    started: list[ServerProcess] = []

    def stop_all():  # a finalizer: runs even when a later start or a test fails
        for proc in started:
            try:
                proc.stop(15)
            except subprocess.TimeoutExpired:
                pass  # stop() killed it

    request.addfinalizer(stop_all)
    errors: list[BaseException] = []

    def start():  # both at once: a server's start is mostly importing onnxruntime
        try:
            started.append(ServerProcess(serve_model, "--threads", "1", "--max-wait-ms", "1"))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    if errors or len(started) != 2:
        raise RuntimeError(f"a replica did not start: {errors}")
    return started


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory, request):
    binary = _nginx()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx; .ci/run installs it)")
    proc = NginxProcess(binary, tmp_path_factory.mktemp("nginx"), [r.port for r in replicas])
    request.addfinalizer(proc.stop)
    return proc


def _local(local_codec, frames):
    codec, decoder = local_codec(), local_codec()
    latents = [codec.encode(c) for c in chunks_of(frames)]
    return latents, [decoder.decode(z) for z in latents]


def test_sessions_spread_over_the_replicas_and_keep_their_state(balancer, replicas, local_codec):
    before = [r.http("/metrics")[1] for r in replicas]
    clips = [clip(10 + i) for i in range(SESSIONS)]
    sessions = []
    try:
        for _ in range(SESSIONS):  # opened one after the other: round robin alternates the replicas
            sessions.append(connect(balancer.url, "encode", timeout=30))
        # every session is open on one replica, directly asked (not through the balancer)
        held = [r.json("/healthz")["sessions"] for r in replicas]
        assert held == [SESSIONS // 2] * 2, held
        # the chunks of all sessions interleaved: each goes down its own connection to its own replica
        got = [[] for _ in range(SESSIONS)]
        for chunk_index in range(3):
            for i, session in enumerate(sessions):
                got[i].append(session.encode(chunks_of(clips[i])[chunk_index]))
    finally:
        for session in sessions:
            session.close()
    for i, frames in enumerate(clips):
        want, _ = _local(local_codec, frames)
        for g, w in zip(got[i], want, strict=True):
            assert g.tobytes() == w.tobytes()  # byte-identical: the state never left its replica
    after = [r.http("/metrics")[1] for r in replicas]
    chunks = [metric(a, "vae_deploy_serve_chunks_total", mode="encode")
              - metric(b, "vae_deploy_serve_chunks_total", mode="encode")
              for a, b in zip(after, before, strict=True)]
    assert chunks == [3 * SESSIONS // 2] * 2, chunks  # each replica ran its two sessions' three chunks


def test_a_decode_session_through_the_balancer(balancer, local_codec):
    frames = clip(20)
    want_latents, want_frames = _local(local_codec, frames)
    with connect(balancer.url, "decode", timeout=30) as session:
        got = [session.decode(z) for z in want_latents]
    for g, w in zip(got, want_frames, strict=True):
        assert g.tobytes() == w.tobytes()


def test_no_state_left_on_either_replica(balancer, replicas):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = [r.json("/healthz") for r in replicas]
        if all(h["sessions"] == 0 and h["streams"] == 0 for h in health):
            return
        time.sleep(0.05)
    raise AssertionError(f"state left behind: {health}")
