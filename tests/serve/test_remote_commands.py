"""`encode`, `decode` (and run_job) with `--server ws://HOST:PORT`: the packaged model served by one real
`vae-deploy serve` process on 127.0.0.1 for the whole module (ort-cpu, one thread, a token), real sockets,
real ONNX Runtime, the packaged clip. The files and frames must be the local commands' byte for byte, a
file encoded on the server must decode locally and the reverse, and every refusal is one `error:` line
with nothing written."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from cli_support import assert_one_line_error
from serve_support import ServerProcess, in_sessions_together, metric
from torch_free_support import edge_cli

from vae_deploy.runtime.latents import LatentReader, LatentWriter
from vae_deploy.video.default_model import default_model_dir
from vae_deploy.video.model_open import ModelChoice
from vae_deploy.video.sources import open_source

TOKEN = "s3cret-token"
FRAMES = 13  # chunks of 8 and 5: a partial last chunk
LOCAL = ModelChoice(None, "ort-cpu", 1)  # the server's settings: one ORT thread, so that bytes must match


@pytest.fixture(scope="module")
def server():
    # --max-batch 2: two sessions' chunks fill a round at once (a lone chunk waits --max-wait-ms for company)
    proc = ServerProcess(default_model_dir(), "--threads", "1", "--max-batch", "2", "--max-wait-ms", "50",
                         "--token", TOKEN)
    yield proc
    assert proc.stop() == 0, "\n".join(proc.lines)


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"ws://127.0.0.1:{server.port}"  # as a user gives it: the /session path is added


@pytest.fixture(scope="module")
def local(carphone, tmp_path_factory):
    """The local commands' outputs: `encode --max-frames 13` and its `decode`, and the decoded frames."""
    from vae_deploy.video.jobs import decode_job, encode_job
    from vae_deploy.video.pipeline import StreamOptions

    folder = tmp_path_factory.mktemp("local")
    latents, video = folder / "clip.vaelat", folder / "clip.mkv"
    encode_job(carphone, latents, options=StreamOptions(max_frames=FRAMES, measure=False), model=LOCAL)
    decode_job(latents, video, model=LOCAL)
    return {"latents": latents, "video": video, "frames": read_video(video)}


def read_video(path) -> np.ndarray:
    with open_source(path) as source:
        return source.read()


def remote(address):
    from vae_deploy.serve.remote_codec import RemoteServer

    return RemoteServer(address, TOKEN)


# ---------------------------------------------------------------- the same outputs


def test_encode_server_writes_the_local_file_byte_for_byte(address, local, carphone, tmp_path):
    """A real process where importing torch fails (the edge install): the served path is torch-free."""
    out = tmp_path / "remote.vaelat"
    done = edge_cli("encode", carphone, "-o", out, "--max-frames", FRAMES, "--server", address, "--token",
                    TOKEN, "-q")
    assert done.returncode == 0, done.stderr
    assert f"backend ort-cpu at {address}" in done.stdout
    assert out.read_bytes() == local["latents"].read_bytes()  # header and fp16 latents, byte for byte


def test_decode_server_gives_the_local_frames_and_files_cross(vd, address, local, carphone, tmp_path,
                                                              monkeypatch):
    # the token from the environment, as `vae-deploy serve` reads it
    monkeypatch.setenv("VAE_DEPLOY_TOKEN", TOKEN)
    remote_video = tmp_path / "remote.mkv"
    done = vd("decode", local["latents"], "-o", remote_video, "--server", address, "-q")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(read_video(remote_video), local["frames"])
    # the reverse: a file encoded on the server decodes locally to the same frames
    remote_latents, local_video = tmp_path / "remote.vaelat", tmp_path / "local.mkv"
    done = vd("encode", carphone, "-o", remote_latents, "--max-frames", FRAMES, "--server", address, "-q")
    assert done.returncode == 0, done.stderr
    done = vd("decode", remote_latents, "-o", local_video, "--threads", "1", "-q")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(read_video(local_video), local["frames"])


def test_run_on_a_server_equals_the_local_run(vd, address, local, carphone, tmp_path):
    """`run --server`: its latents are the local encode's bytes, its frames the local decode's, and the
    quality it reports is measured here, on the frames the server gave back."""
    video, latents, metrics = tmp_path / "run.mkv", tmp_path / "run.vaelat", tmp_path / "m.json"
    done = vd("run", carphone, "-o", video, "--latents", latents, "--metrics", metrics,
              "--max-frames", FRAMES, "--server", address, "--token", TOKEN, "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads(metrics.read_text())
    assert report["frames"] == FRAMES and report["backend"] == f"ort-cpu at {address}"
    assert report["psnr"] is not None
    assert latents.read_bytes() == local["latents"].read_bytes()
    assert np.array_equal(read_video(video), local["frames"])


def test_run_on_a_server_takes_one_source(vd, address, carphone, tmp_path):
    result = vd("run", carphone, "--out-dir", tmp_path / "runs", "--server", address, "--token", TOKEN)
    assert_one_line_error(result, "--server runs one source", 2)
    assert list(tmp_path.iterdir()) == []


def test_the_remote_codec_gives_the_local_codecs_bytes_alone_and_batched(server, address):
    """Float32 frames and fp16 latents at the codec, for the pipeline's chunks (8, then 5 padded by the
    server): one session alone, and two sessions whose chunks meet in the server's rounds."""
    from vae_deploy.video.latent_codec import LatentCodec
    from vae_deploy.video.model_open import open_model
    from vae_deploy.video.pipeline import StreamOptions

    rng = np.random.default_rng(0)
    clips = [rng.random((FRAMES, 3, 64, 96), dtype=np.float32) for _ in range(2)]
    with open_model(LOCAL) as runner:
        want = []
        for frames in clips:
            enc, dec = LatentCodec(runner), LatentCodec(runner)
            latents = [enc.encode(frames[:8]), enc.encode(frames[8:])]
            want.append((latents, [dec.decode(z) for z in latents]))

    def through(frames, barrier=None):
        with remote(address).connect(("encode", "decode")) as model:
            codec = model.open_codec(model.video_info, tiling=StreamOptions().tile)
            latents, decoded = [], []
            for part in (frames[:8], frames[8:]):
                if barrier is not None:
                    barrier.wait(30)
                latents.append(codec.encode(part))
                if barrier is not None:
                    barrier.wait(30)
                decoded.append(codec.decode(latents[-1]))
            return latents, decoded

    alone = through(clips[0])
    before = server.http("/metrics", {"Authorization": f"Bearer {TOKEN}"})[1]
    got = in_sessions_together(lambda i, barrier: through(clips[i], barrier), 2)
    after = server.http("/metrics", {"Authorization": f"Bearer {TOKEN}"})[1]
    for (got_z, got_x), (want_z, want_x) in zip([alone, got[0], got[1]], [want[0], *want], strict=True):
        assert [z.dtype for z in got_z] == [np.float16] * 2 and [x.dtype for x in got_x] == [np.float32] * 2
        assert [z.tobytes() for z in got_z] == [z.tobytes() for z in want_z]
        assert [x.tobytes() for x in got_x] == [x.tobytes() for x in want_x]
    # the batched case was batched: some encoder rounds held both sessions' chunks
    rounds = (metric(after, "vae_deploy_serve_batch_size_count", graph="encoder")
              - metric(before, "vae_deploy_serve_batch_size_count", graph="encoder"))
    single = (metric(after, "vae_deploy_serve_batch_size_bucket", graph="encoder", le="1.0")
              - metric(before, "vae_deploy_serve_batch_size_bucket", graph="encoder", le="1.0"))
    assert single < rounds, (rounds, single)


# ---------------------------------------------------------------- refusals: one line, nothing written


def test_an_unreachable_server_is_one_line(vd, carphone, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        out = tmp_path / "x.vaelat"
        result = vd("encode", carphone, "-o", out, "--max-frames", 2, "--server", f"ws://127.0.0.1:{port}",
                    "-q")
    assert_one_line_error(result, f"cannot reach the server at ws://127.0.0.1:{port}/session", 2)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("local_option", [("--model", "MODEL"), ("--backend", "ort-cpu"), ("--threads", "1"),
                                          ("--tile", "64"), ("--tile-budget", "1GB")],
                         ids=["model", "backend", "threads", "tile", "tile-budget"])
def test_server_with_a_local_model_choice_or_tiles_is_refused(vd, address, local, tmp_path, local_option):
    flag, value = local_option
    value = str(default_model_dir()) if value == "MODEL" else value
    out = tmp_path / "x.mkv"
    result = vd("decode", local["latents"], "-o", out, "--server", address, "--token", TOKEN, flag, value)
    assert_one_line_error(result, flag, 2)
    assert "--server" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("address_given", ["http://127.0.0.1:8000", "127.0.0.1:8000", "ws://:8000",
                                           "ws://127.0.0.1:port"])
def test_a_malformed_server_address_is_one_line(vd, carphone, tmp_path, address_given):
    result = vd("encode", carphone, "-o", tmp_path / "x.vaelat", "--server", address_given)
    assert_one_line_error(result, "--server must be ws://HOST:PORT", 2)
    assert list(tmp_path.iterdir()) == []


def test_another_models_latents_are_refused_by_the_server(vd, address, local, tmp_path):
    """A file whose header names another model (its payload checksum still holds): the server refuses the
    session (wrong_model) before any chunk, in one line, and no video is written."""
    reader = LatentReader(local["latents"])
    other = tmp_path / "other.vaelat"
    forged = dataclasses.replace(reader.header, model_fingerprint="0" * 64, latent_frames=0)
    writer = LatentWriter(other, forged)
    for chunk in reader.chunks(8, 0):
        writer.write(chunk)
    writer.close()
    out = tmp_path / "out.mkv"
    result = vd("decode", other, "-o", out, "--server", address, "--token", TOKEN)
    assert_one_line_error(result, f"the server at {address} serves another model", 2)
    assert "00000000" in result.stderr and not out.exists()


def test_a_missing_token_and_a_refused_chunk_are_one_line(vd, address, carphone, tmp_path):
    out = tmp_path / "x.vaelat"
    result = vd("encode", carphone, "-o", out, "--max-frames", 2, "--server", address)
    assert_one_line_error(result, "server refused (unauthorized)", 2)
    # refused mid-stream: the session opens, its first chunk is beyond the server's --max-frame-pixels
    # (1920x1088), so the file is never published
    result = vd("encode", carphone, "-o", out, "--max-frames", 1, "--chunk", 1, "--size", 1400, "--server",
                address, "--token", TOKEN)
    assert_one_line_error(result, "server refused (bad_chunk)", 2)
    assert list(tmp_path.iterdir()) == []


def test_a_server_gone_mid_stream_is_one_line_and_publishes_nothing(carphone, tmp_path):
    """A real `encode --server` process whose server is killed while its first chunk waits for its round
    (--max-wait-ms 3000): the client's connection drops without a close frame; one line, exit 2, no file."""
    from cli_support import cli_process

    gone = ServerProcess(default_model_dir(), "--threads", "1", "--max-wait-ms", "3000")
    out = tmp_path / "x.vaelat"
    try:
        client = threading.Thread(target=lambda: results.append(cli_process(
            "encode", carphone, "-o", out, "--max-frames", 16, "--server", f"ws://127.0.0.1:{gone.port}",
            "-q", timeout=120)))
        results: list = []
        client.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not gone.json("/healthz")["sessions"]:
            time.sleep(0.05)
        time.sleep(0.5)  # the first chunk is in the server by now, waiting for company (else its send fails)
        gone.kill()
        client.join(120)
    finally:
        gone.kill()
    assert_one_line_error(results[0], f"the server at ws://127.0.0.1:{gone.port}/session closed the session",
                          2)
    assert list(tmp_path.iterdir()) == []


def test_the_open_message_takes_a_latent_space_and_the_summary_has_the_normalization(server):
    """What `--raw-latents` and the remote codec rely on: the session's latent space in `ready`, a bad one
    refused, and the model's latent normalization in the summary (the packaged model has none)."""
    from vae_deploy.serve.client import RemoteSession, ServerRefusal

    status, body = server.http("/model", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and '"latent_normalization":null' in body.replace(" ", "")
    with RemoteSession(server.url, "encode", token=TOKEN, latent_space="raw") as session:
        assert session.latent_space == "raw" and session.model["latent_normalization"] is None
    with pytest.raises(ServerRefusal) as refused:
        RemoteSession(server.url, "decode", token=TOKEN, latent_space="diffusion")
    assert (refused.value.code, refused.value.close_code) == ("bad_message", 1007)
    assert "latent_space must be raw or normalized" in str(refused.value)
