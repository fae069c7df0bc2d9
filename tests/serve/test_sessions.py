"""`vae-deploy serve` over real sockets on 127.0.0.1: a session alone equals the local codec bit for bit,
concurrent sessions batched equal each alone, and the HTTP endpoints. One server process for the module."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from serve_support import ServerProcess, chunks_of, clip, in_sessions_together, metric

from vae_deploy.serve.client import RemoteFrameStream, connect


@pytest.fixture(scope="module")
def server(serve_model):
    # a long wait so that concurrent sessions meet in rounds even on a busy machine (three sessions fill a
    # round of --max-batch 3 at once; a lone chunk waits the whole 150 ms); one ORT thread: the batch rows
    # then sum in the order of one row alone (docs/architecture.md, "Batched streams"); edge=True: the
    # server runs where importing torch fails
    proc = ServerProcess(serve_model, "--threads", "1", "--max-batch", "3", "--max-wait-ms", "150", edge=True)
    yield proc
    assert proc.stop() == 0, "\n".join(proc.lines)


def _local(local_codec, frames):
    codec = local_codec()
    latents = [codec.encode(c) for c in chunks_of(frames)]
    decoder = local_codec()
    return latents, [decoder.decode(z) for z in latents]


def _remote(url, frames, barrier=None):
    with connect(url, "encode") as enc, connect(url, "decode") as dec:
        if barrier is not None:
            barrier.wait(timeout=30)
        latents = [enc.encode(c) for c in chunks_of(frames)]
        return latents, [dec.decode(z) for z in latents]


def test_a_session_alone_gives_the_local_codecs_bytes(server, local_codec):
    frames = clip(0)
    want_latents, want_frames = _local(local_codec, frames)
    got_latents, got_frames = _remote(server.url, frames)
    assert [z.dtype for z in got_latents] == [np.float16] * 3
    assert [z.shape for z in got_latents] == [z.shape for z in want_latents]
    for got, want in zip(got_latents + got_frames, want_latents + want_frames, strict=True):
        assert got.tobytes() == want.tobytes()  # byte-identical latents and frames


def test_concurrent_sessions_are_batched_and_equal_each_alone(server, local_codec):
    before = server.http("/metrics")[1]
    clips = [clip(seed) for seed in (1, 2, 3)]
    results = in_sessions_together(lambda i, barrier: _remote(server.url, clips[i], barrier), 3)
    for i, frames in enumerate(clips):
        want_latents, want_frames = _local(local_codec, frames)
        got_latents, got_frames = results[i]
        for got, want in zip(got_latents + got_frames, want_latents + want_frames, strict=True):
            assert got.tobytes() == want.tobytes()  # byte-identical under batching (ort-cpu, one thread)
    after = server.http("/metrics")[1]
    # some rounds held more than one session's chunk (the batch-size histogram's bucket le=1 grew less
    # than its count)
    rounds = (metric(after, "vae_deploy_serve_batch_size_count", graph="encoder")
              - metric(before, "vae_deploy_serve_batch_size_count", graph="encoder"))
    single = (metric(after, "vae_deploy_serve_batch_size_bucket", graph="encoder", le="1.0")
              - metric(before, "vae_deploy_serve_batch_size_bucket", graph="encoder", le="1.0"))
    assert 0 < rounds < 9 and single < rounds, (rounds, single)


def test_remote_frame_stream_mirrors_frame_stream(server, serve_model):
    from vae_deploy.video.frames import FrameStream

    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(7)]
    with FrameStream.open(serve_model, (64, 48), backend="ort-cpu", threads=1, chunk=4, tile="off") as local:
        want = [c for f in frames for c in local.push(f)] + local.flush()
    with RemoteFrameStream(server.url, (64, 48), chunk=4) as remote:
        got = [c for f in frames for c in remote.push(f)] + remote.flush()
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        assert g.latents.tobytes() == w.latents.tobytes()
        assert np.array_equal(g.frames, w.frames)


def test_healthz_model_and_metrics(server, local_codec):
    assert server.http("/healthz")[0] == 200
    model = server.json("/model")
    assert model["kind"] == "causal3d" and model["temporal_factor"] == 2 and model["latent_channels"] == 4
    assert model["spatial_factor"] == 8 and model["first_frames"] == 0
    assert {"encoder", "decoder"} <= set(model["graphs"])
    assert model["fingerprint"] == local_codec().info.fingerprint
    status, text = server.http("/metrics")
    assert status == 200
    for name in ("vae_deploy_serve_sessions_open", "vae_deploy_serve_chunks_total",
                 "vae_deploy_serve_frames_total", "vae_deploy_serve_batch_size_bucket",
                 "vae_deploy_serve_chunk_seconds_bucket", "vae_deploy_serve_refusals_total"):
        assert name in text or name.replace("_total", "") in text, name
    assert metric(text, "vae_deploy_serve_chunks_total", mode="encode") >= 3
    assert metric(text, "vae_deploy_serve_frames_total", mode="encode") >= 11


def test_a_client_faster_than_the_server_is_slowed(server):
    """Back-pressure: a client that sends chunks without reading the answers is blocked once the server's
    bounded receive queue and TCP's buffers are full, instead of the server buffering them (here every lone
    chunk waits --max-wait-ms 150 for company: the server answers at most about 7 chunks a second)."""
    import socket as socketlib

    from websockets.sync.client import connect as ws_connect

    from vae_deploy.serve.protocol import pack

    message = pack({"op": "chunk"}, clip(0, 4))  # 196 KB
    sent = 0
    ws = ws_connect(server.url, open_timeout=10, compression=None).__enter__()
    ws.send(pack({"op": "open", "mode": "encode"}))
    ws.recv(timeout=10)

    def flood():
        nonlocal sent
        try:
            for _ in range(400):  # 78 MB, if nothing pushed back
                ws.send(message)
                sent += 1
        except Exception:  # noqa: BLE001 - the socket shut down under a blocked send
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(2.0)
    stalled_at = sent
    assert sender.is_alive() and stalled_at < 200, stalled_at  # blocked, not buffered
    ws.socket.shutdown(socketlib.SHUT_RDWR)
    sender.join(10)
    deadline = threading.Event()
    for _ in range(200):
        if server.json("/healthz")["streams"] == 0:
            break
        deadline.wait(0.05)
    assert server.json("/healthz")["streams"] == 0
    print(f"sent before blocking: {stalled_at} chunks of {len(message)} bytes")


def test_the_docs_plain_python_client_runs(server):
    """docs/serve.md's client without vae-deploy, against this server."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "serve.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "struct" in block)
    code = code.replace("ws://127.0.0.1:8000/session", server.url)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["latents float16 (2, 4, 8, 8)"] * 3
