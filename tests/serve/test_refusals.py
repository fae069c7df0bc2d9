"""The server's refusals over real sockets: each is an `error` message (a code, one line) and a close code,
and the server keeps serving. One server process (with a token, small limits) for the module."""

from __future__ import annotations

import time

import numpy as np
import pytest
from serve_support import ServerProcess, clip, metric
from websockets.sync.client import connect as ws_connect

from vae_deploy.serve.client import ServerRefusal, connect
from vae_deploy.serve.protocol import pack, unpack

TOKEN = "s3cret"
IDLE = 1.5


@pytest.fixture(scope="module")
def server(serve_model):
    proc = ServerProcess(serve_model, "--threads", "1", "--token", TOKEN, "--max-sessions", "2",
                         "--max-message-mb", "0.25", "--max-frame-pixels", str(64 * 64), "--idle-timeout",
                         str(IDLE))
    yield proc
    assert proc.stop() == 0, "\n".join(proc.lines)


def _raw(server, *messages: bytes) -> tuple[dict, int]:
    """Open a WebSocket, send `messages`, return the error header and the close code."""
    with ws_connect(server.url, open_timeout=10, compression=None) as ws:
        for m in messages:
            ws.send(m)
        header = {}
        try:
            while True:
                header, _ = unpack(ws.recv(timeout=10))
                if header["op"] == "error":
                    break
        finally:
            try:
                ws.recv(timeout=10)
            except Exception:  # noqa: BLE001 - the close frame ends the connection
                pass
        return header, ws.close_code


def _open(mode="encode", **extra) -> bytes:
    return pack({"op": "open", "mode": mode, "token": TOKEN, **extra})


def _wait_for_no_streams(server, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = server.json("/healthz")
        if health["streams"] == 0 and health["sessions"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"state left behind: {health}")


def test_token_is_required(server):
    with pytest.raises(ServerRefusal) as refused:
        connect(server.url, "encode")
    assert (refused.value.code, refused.value.close_code) == ("unauthorized", 1008)
    assert server.http("/model")[0] == 401
    assert server.http("/model", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert server.http("/healthz")[0] == 200  # a load balancer's probe needs no secret


def test_too_many_sessions_then_a_slot_frees(server):
    a = connect(server.url, "encode", token=TOKEN)
    b = connect(server.url, "decode", token=TOKEN)
    with pytest.raises(ServerRefusal) as refused:
        connect(server.url, "encode", token=TOKEN)
    assert (refused.value.code, refused.value.close_code) == ("too_many_sessions", 1013)
    assert "--max-sessions" in refused.value.message
    text = server.http("/metrics", {"Authorization": f"Bearer {TOKEN}"})[1]
    assert metric(text, "vae_deploy_serve_refusals_total", reason="too_many_sessions") >= 1
    b.close()
    deadline = time.monotonic() + 10
    while server.json("/healthz")["sessions"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with connect(server.url, "encode", token=TOKEN) as c:
        assert c.encode(clip(0, 2)).shape == (1, 4, 8, 8)
    a.close()
    _wait_for_no_streams(server)


@pytest.mark.parametrize("message, code", [
    (b"\x01\x00", "bad_message"),  # shorter than the header length
    (b"\xff\x00\x00\x00{}", "bad_message"),  # a header length beyond the message
    (b"\x05\x00\x00\x00{bad}", "bad_message"),  # not JSON
    (pack({"op": "chunk"}) + b"\x00" * 8, "bad_message"),  # bytes after a header without dtype/shape
])
def test_malformed_messages(server, message, code):
    header, close = _raw(server, _open(), message)
    assert (header["code"], close) == (code, 1007)
    assert "\n" not in header["message"]


def test_bad_chunks(server):
    frames = clip(0, 2)
    cases = {
        "float16 frames": pack({"op": "chunk"}, frames.astype(np.float16)),
        "a 3-D chunk": pack({"op": "chunk"}, frames[0]),
        "a wrong byte count": pack({"op": "chunk"}, frames)[:-4],
        "a frame beyond --max-frame-pixels": pack({"op": "chunk"}, clip(0, 2, size=72)),
        "a size not a multiple of 8": pack({"op": "chunk"}, frames[:, :, :60, :60]),
    }
    for what, message in cases.items():
        header, close = _raw(server, _open(), message)
        assert header["code"] in ("bad_chunk", "bad_message") and close == 1007, (what, header)
    header, close = _raw(server, _open("decode"), pack({"op": "chunk"}, np.zeros((1, 3, 8, 8), np.float16)))
    assert header["code"] == "bad_chunk" and "channels" in header["message"]
    header, close = _raw(server, _open("decode", fingerprint="0" * 64))
    assert (header["code"], close) == ("wrong_model", 1007)
    _wait_for_no_streams(server)


def test_oversized_message_is_refused_by_the_protocol(server):
    big = clip(0, 4, size=128)  # 786 KB > 0.25 MiB
    with connect(server.url, "encode", token=TOKEN) as session, pytest.raises(ServerRefusal) as refused:
        session.encode(big)
    assert refused.value.close_code == 1009  # "message too big", from the WebSocket layer itself
    _wait_for_no_streams(server)


def test_idle_timeout_frees_the_state(server):
    session = connect(server.url, "encode", token=TOKEN)
    session.encode(clip(0, 2))
    assert server.json("/healthz")["streams"] == 1
    time.sleep(IDLE + 0.5)
    _wait_for_no_streams(server)
    with pytest.raises(ServerRefusal) as refused:
        session.encode(clip(0, 2))
    assert refused.value.close_code == 4408
    session.close()
    text = server.http("/metrics", {"Authorization": f"Bearer {TOKEN}"})[1]
    assert metric(text, "vae_deploy_serve_refusals_total", reason="idle_timeout") >= 1


def test_a_disconnect_mid_chunk_leaves_no_state(server):
    for _ in range(3):
        ws = ws_connect(server.url, open_timeout=10, compression=None).__enter__()
        ws.send(_open())
        ws.recv(timeout=10)
        ws.send(pack({"op": "chunk"}, clip(0, 4)))
        ws.close()  # before the answer
    _wait_for_no_streams(server)
    with connect(server.url, "encode", token=TOKEN) as session:  # still serving
        assert session.encode(clip(0, 2)).dtype == np.float16


def test_a_slow_sender_is_cut_at_the_idle_timeout(server):
    """A client that trickles one chunk's message in fragments: the session waits for the whole message at
    most --idle-timeout (the timer runs until a whole message is in, not until the next byte), then refuses
    with 4408 and frees its state; a message trickled faster than that is served."""
    message = pack({"op": "chunk"}, clip(0, 2))

    def trickle(pieces: int, pause: float):
        size = -(-len(message) // pieces)
        for start in range(0, len(message), size):
            yield message[start:start + size]
            time.sleep(pause)

    with ws_connect(server.url, open_timeout=10, compression=None) as ws:
        ws.send(_open())
        ws.recv(timeout=10)
        ws.send(trickle(4, 0.05))  # whole within 0.2 s: served
        assert unpack(ws.recv(timeout=10))[0]["op"] == "latents"
        began = time.monotonic()
        try:
            ws.send(trickle(40, 0.25))  # 10 s for one message: cut long before it ends
        except Exception:  # noqa: BLE001 - the server closed the connection under the send
            pass
        header, _ = unpack(ws.recv(timeout=10))
        assert header["code"] == "idle_timeout", header
        assert time.monotonic() - began < IDLE + 5
    assert ws.close_code == 4408
    _wait_for_no_streams(server)


def test_wrong_dtype_or_shape_in_a_decode_session(server):
    latents = np.zeros((1, 4, 8, 8), np.float16)
    cases = {
        "float32 latents": pack({"op": "chunk"}, latents.astype(np.float32)),
        "3-D latents": pack({"op": "chunk"}, latents[0]),
        "no latent frame": pack({"op": "chunk"}, latents[:0]),
        "a shape that does not match the bytes":
            pack({"op": "chunk", "dtype": "float16", "shape": [1, 4, 8, 9]}) + latents.tobytes(),
    }
    for what, message in cases.items():
        header, close = _raw(server, _open("decode"), message)
        assert header["code"] in ("bad_chunk", "bad_message") and close == 1007, (what, header)
        assert "\n" not in header["message"]
    with connect(server.url, "decode", token=TOKEN) as session:  # still serving
        assert session.decode(latents).shape == (2, 3, 64, 64)
    _wait_for_no_streams(server)
