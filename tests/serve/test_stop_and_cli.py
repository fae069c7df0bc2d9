"""The graceful stop (SIGTERM: the chunk in flight is answered, new sessions and then the open ones are
closed with a reason, exit 0) and the command's bad input (one line, a non-zero exit, nothing started)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from serve_support import ServerProcess, clip

from vae_deploy.serve.client import ServerRefusal, connect


def test_sigterm_answers_the_chunk_in_flight_then_closes_and_exits_0(serve_model, local_codec):
    # a lone chunk waits --max-wait-ms for others to join its round: a window to stop the server in
    proc = ServerProcess(serve_model, "--threads", "1", "--max-batch", "4", "--max-wait-ms", "2500")
    try:
        session = connect(proc.url, "encode")
        frames = clip(7, 4)
        answer: dict = {}

        def send():
            try:
                answer["latents"] = session.encode(frames)
                session.encode(frames)  # after the stop: refused
            except ServerRefusal as err:
                answer["refusal"] = err

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(1.0)  # the chunk is in the server, waiting for its round
        proc.proc.terminate()
        time.sleep(0.2)
        with pytest.raises(ServerRefusal) as late:  # a new session during the stop
            connect(proc.url, "decode", timeout=10)
        assert (late.value.code, late.value.close_code) == ("shutting_down", 1001)
        sender.join(30)
        assert answer["latents"].tobytes() == local_codec().encode(frames).tobytes()
        assert (answer["refusal"].code, answer["refusal"].close_code) == ("shutting_down", 1001)
        assert proc.proc.wait(30) == 0, "\n".join(proc.lines)
        assert not any("Traceback" in line for line in proc.lines), proc.lines
    finally:
        proc.kill()


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vae_deploy", "serve", *args], capture_output=True,
                          text=True, timeout=60)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_bad_command_lines(serve_model, tmp_path):
    assert "model folder not found" in _one_error_line(_serve(str(tmp_path / "nowhere"), "--port", "0"))
    line = _one_error_line(_serve(str(serve_model), "--host", "0.0.0.0", "--port", "0"))
    assert "--token" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = _one_error_line(_serve(str(serve_model), "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in line
