""".vaelat files as `vae-deploy` writes and reads them: two `run`s writing one latent file at once, a
damaged payload, forged or malformed headers (one `error:` line each), and version 1 files."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
from cli_support import assert_one_line_error, invoke_main
from cli_support import cli_process as cli

from vae_deploy.runtime.latents import MAGIC, MAX_FRAME_SIDE, LatentReader
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source


@pytest.fixture
def vd(capsys, monkeypatch):
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


@pytest.fixture(scope="module")
def frame_model(tiny_video_model):
    return tiny_video_model("frame")


@pytest.fixture(scope="module")
def encoded(frame_model, tmp_path_factory):
    """A real .vaelat: 8 frames of carphone_pristine encoded by the tiny frame model, chunks of 4."""
    path = tmp_path_factory.mktemp("encoded") / "clip.vaelat"
    done = cli("encode", sample_video_path("carphone_pristine"), "-o", path, "--model", frame_model,
               "--max-frames", 8, "--chunk", 4, "-q")
    assert done.returncode == 0, done.stderr
    return path


def read_video(path) -> np.ndarray:
    with open_source(path) as source:
        return source.read()


def split(path) -> tuple[bytes, dict]:
    """(latent payload, header) of a .vaelat file."""
    data = path.read_bytes()
    header_len, trailer = struct.unpack("<Q8s", data[-16:])
    assert data[:8] == MAGIC and trailer == MAGIC
    return data[8:-16 - header_len], json.loads(data[-16 - header_len:-16])


def assemble(path, payload: bytes, header) -> None:
    """Write a container by hand: magic, payload, JSON header, trailer."""
    text = json.dumps(header).encode()
    path.write_bytes(MAGIC + payload + text + struct.pack("<Q8s", len(text), MAGIC))


# ---------------------------------------------------------------- two writers, one path


def test_two_concurrent_runs_writing_one_latent_file_publish_one_whole_file(frame_model, tmp_path):
    """Two real `vae-deploy run` processes, different clips and sizes, the same --latents path: both finish,
    and the published file is exactly one of them (its header matches its payload) and decodes."""
    shared = tmp_path / "shared.vaelat"
    runs = {
        "carphone": [sample_video_path("carphone_pristine"), "--size", 96, "--max-frames", 120],
        "bikes": [sample_video_path("bikes"), "--size", 64, "--max-frames", 120],
    }
    # Each run's own latents, written alone, to compare the shared file with byte for byte.
    for name, args in runs.items():
        alone = cli("encode", *args, "-o", tmp_path / f"{name}.vaelat", "--model", frame_model, "--chunk", 4,
                    "-q")
        assert alone.returncode == 0, alone.stderr
    procs = [subprocess.Popen([sys.executable, "-m", "vae_deploy", "run", *map(str, args), "--model",
                               str(frame_model), "--chunk", "4", "--latents", str(shared), "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in runs.values()]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    published = shared.read_bytes()
    matches = [name for name in runs if (tmp_path / f"{name}.vaelat").read_bytes() == published]
    assert len(matches) == 1, "the shared file is neither run's latents"
    header = LatentReader(shared).header
    assert header.frame_count == 120 and header.latent_frames == 120
    assert header.source_size == {"carphone": [176, 144], "bikes": [640, 272]}[matches[0]]
    assert not list(tmp_path.glob(".*part*"))  # no temporary file left behind
    dec = cli("decode", shared, "-o", tmp_path / "dec.mkv", "--model", frame_model, "-q")
    assert dec.returncode == 0, dec.stderr
    assert read_video(tmp_path / "dec.mkv").shape == (120, header.source_size[1], header.source_size[0], 3)


# ---------------------------------------------------------------- payload checksum


def test_decode_refuses_a_flipped_payload_bit_before_decoding(encoded, frame_model, tmp_path):
    payload, header = split(encoded)
    damaged = bytearray(payload)
    damaged[len(damaged) // 2] ^= 0x04
    assemble(tmp_path / "flipped.vaelat", bytes(damaged), header)
    result = cli("decode", tmp_path / "flipped.vaelat", "-o", tmp_path / "out.mkv", "--model", frame_model)
    assert_one_line_error(result, "flipped.vaelat is damaged: its latent data does not match")
    assert "payload_sha256" in result.stderr
    assert not (tmp_path / "out.mkv").exists() and not list(tmp_path.glob(".*part*"))


def test_a_version_1_file_still_decodes_to_the_same_frames(vd, encoded, frame_model, tmp_path):
    """Version 1: the model fingerprint named model_sha256, no checksum (nothing to check), raw latents."""
    payload, header = split(encoded)
    old = {("model_sha256" if k == "model_fingerprint" else k): v for k, v in header.items()
           if k not in ("payload_sha256", "latent_space")}
    old["version"] = 1
    assemble(tmp_path / "old.vaelat", payload, old)
    new = vd("decode", encoded, "-o", tmp_path / "new.mkv", "--model", frame_model, "-q")
    assert new.returncode == 0, new.stderr
    dec = vd("decode", tmp_path / "old.vaelat", "-o", tmp_path / "old.mkv", "--model", frame_model, "-q",
             "--metrics", tmp_path / "m.json")
    assert dec.returncode == 0, dec.stderr
    np.testing.assert_array_equal(read_video(tmp_path / "old.mkv"), read_video(tmp_path / "new.mkv"))
    assert json.loads((tmp_path / "m.json").read_text())["model_fingerprint"] == header["model_fingerprint"]


# ---------------------------------------------------------------- headers: every field checked


def _set(field, value):
    def edit(header):
        header[field] = value
    return edit


def _set_fit(field, value):
    def edit(header):
        header["fit"][field] = value
    return edit


def _drop(field):
    return lambda header: header.pop(field)


BAD_HEADERS = {
    "shape-strings": (_set("latent_shape", ["4", "4", "5"]), "latent_shape must be 3 positive integers"),
    "shape-two-dims": (_set("latent_shape", [4, 4]), "latent_shape must be 3 positive integers"),
    "shape-zero": (_set("latent_shape", [4, 0, 5]), "latent_shape must be 3 positive integers"),
    "fps-string": (_set("fps", "fast"), "fps must be a finite positive number"),
    "fps-zero": (_set("fps", 0), "fps must be a finite positive number"),
    "fps-nan": (_set("fps", float("nan")), "fps must be a finite positive number"),
    "fps-inf": (_set("fps", float("inf")), "fps must be a finite positive number"),
    "frame-count-negative": (_set("frame_count", -1), "frame_count must be a non-negative integer"),
    "frame-count-string": (_set("frame_count", "8"), "frame_count must be a non-negative integer"),
    "latent-frames-float": (_set("latent_frames", 8.0), "latent_frames must be a non-negative integer"),
    "latent-frames-bool": (_set("latent_frames", True), "latent_frames must be a non-negative integer"),
    "source-huge": (_set("source_size", [10**9, 144]), f"source_size must be 2 integers (width, height) "
                                                       f"from 1 to {MAX_FRAME_SIDE}"),
    "source-one-side": (_set("source_size", [176]), "source_size must be 2 integers"),
    "working-zero": (_set("working_size", [0, 32]), "working_size must be 2 integers"),
    "fit-not-dict": (_set("fit", "snap"), "fit must be a fit record"),
    "fit-missing-field": (lambda h: h["fit"].pop("channels"), "fit must be a fit record"),
    "fit-unknown-mode": (_set_fit("mode", "crop"), "fit: unknown fit mode 'crop'"),
    "fit-channels": (_set_fit("channels", 2), "fit.channels must be 1 or 3"),
    "fit-model-size": (_set_fit("model_size", [40, "32"]), "fit.model_size must be 2 integers"),
    "fit-huge": (_set_fit("model_size", [40, 10**6]), "fit.model_size must be 2 integers"),
    "fit-source-mismatch": (_set_fit("source_size", [170, 144]), "fit.source_size must be the header's"),
    "chunk-negative": (_set("chunk", -4), "chunk must be a non-negative integer"),
    "chunk-string": (_set("chunk", "4"), "chunk must be a non-negative integer"),
    "version-string": (_set("version", "2"), "version must be an integer, got '2'"),
    "version-future": (_set("version", 3), "latents version 3; this vae-deploy reads versions 1, 2"),
    "format": (_set("format", "other"), "format must be 'vae-deploy-latents'"),
    "fingerprint-number": (_set("model_fingerprint", 12), "model_fingerprint must be 64 hexadecimal digits"),
    "checksum-missing": (_drop("payload_sha256"), "missing payload_sha256"),
    "unknown-field": (_set("colour", "red"), "unknown colour"),
    "dtype": (_set("dtype", "float32"), "dtype must be 'float16'"),
    "more-latents-than-frames": (_set("frame_count", 7), "latent_frames (8) exceeds frame_count (7)"),
    "frame-count-too-big": (_set("frame_count", 9), "frame_count 9 needs 9 latent frames"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_decode_refuses_a_bad_header_field_in_one_line(vd, encoded, frame_model, tmp_path, case):
    edit, message = BAD_HEADERS[case]
    payload, header = split(encoded)
    edit(header)
    bad = tmp_path / f"{case}.vaelat"
    assemble(bad, payload, header)
    result = vd("decode", bad, "-o", tmp_path / "out.mkv", "--model", frame_model, "-q")
    assert_one_line_error(result, message)
    assert str(bad) in result.stderr
    assert not (tmp_path / "out.mkv").exists()


def test_a_version_given_as_a_string_is_not_called_the_version_it_names(vd, encoded, frame_model, tmp_path):
    payload, header = split(encoded)
    header["version"] = "1"
    assemble(tmp_path / "v.vaelat", payload, header)
    result = vd("decode", tmp_path / "v.vaelat", "-o", tmp_path / "out.mkv", "--model", frame_model)
    assert_one_line_error(result, "version must be an integer, got '1'")
    assert "reads version" not in result.stderr


def test_a_header_that_is_not_an_object_is_refused(vd, encoded, frame_model, tmp_path):
    payload, _ = split(encoded)
    assemble(tmp_path / "list.vaelat", payload, [1, 2, 3])
    result = vd("decode", tmp_path / "list.vaelat", "-o", tmp_path / "out.mkv", "--model", frame_model)
    assert_one_line_error(result, "list.vaelat has a corrupt header: not a JSON object")


@pytest.mark.parametrize("text", [b"[" * 100_000, b'{"fps": ' + b"1" * 5000 + b"}", b"\xff\xfe{}", b"{"],
                         ids=["deep-nesting", "5000-digit-number", "not-utf8", "cut-json"])
def test_a_header_json_cannot_end_in_a_traceback(vd, encoded, frame_model, tmp_path, text):
    payload, _ = split(encoded)
    bad = tmp_path / "raw.vaelat"
    bad.write_bytes(MAGIC + payload + text + struct.pack("<Q8s", len(text), MAGIC))
    result = vd("decode", bad, "-o", tmp_path / "out.mkv", "--model", frame_model)
    assert_one_line_error(result, "raw.vaelat has a corrupt header")


# ---------------------------------------------------------------- forged sizes: refused before any frame


def forge_sizes(encoded, path, source_size, frames=None, **fit) -> None:
    """`encoded` with the header's source size (and fit fields) replaced, keeping a valid checksum; with
    `frames`, only that many latent frames (the payload cut and its checksum recomputed)."""
    import hashlib

    payload, header = split(encoded)
    header["source_size"] = header["fit"]["source_size"] = list(source_size)
    header["fit"].update(fit)
    if frames is not None:
        payload = payload[:len(payload) // header["latent_frames"] * frames]
        header["frame_count"] = header["latent_frames"] = frames
        header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    assemble(path, payload, header)


FORGED_SIZES = {
    # the file: decoded with exit 0 at 10 GB (15000) or ended in "unexpected ArgumentError" (16384)
    "15000x15000": (([15000, 15000],), {}, "source_size must be 2 integers (width, height) from 1 to 8192"),
    "16384x16384": (([16384, 16384],), {}, "source_size must be 2 integers (width, height) from 1 to 8192"),
    # the fit of a 4000x400 source at short side 32 is 320x32, not the file's 40x32 (176x144's)
    "source-its-latents-cannot-make": (([4000, 400],), {},
                                       "a 4000x400 source at short side 32 (snap) is fitted to 320x32"),
    # 176x144 at short side 64 is 80x64, not 40x32
    "short-side-its-latents-cannot-make": (([176, 144],), {"short_side": 64},
                                           "at short side 64 (snap) is fitted to 80x64"),
}


@pytest.mark.parametrize("case", sorted(FORGED_SIZES))
def test_decode_refuses_sizes_its_latents_cannot_make_before_any_frame(vd, encoded, frame_model, tmp_path,
                                                                       case):
    """A header's checksum covers the latents, not the sizes: sizes over the limit `run` applies (8192 per
    side) or that the file's own fit record does not give from its source size are one line, no output."""
    (source,), fit, message = FORGED_SIZES[case]
    bad = tmp_path / "forged.vaelat"
    forge_sizes(encoded, bad, source, frames=1, **fit)
    assert bad.stat().st_size < 4096
    result = vd("decode", bad, "-o", tmp_path / "out.mkv", "--model", frame_model, "-q")
    assert_one_line_error(result, message)
    assert str(bad) in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forged.vaelat"]


def test_the_largest_header_decode_accepts_is_one_run_would_write(vd, frame_model, tmp_path):
    """The edge of the limit: an 8192x16 source at its own size (the most pixels per side `run` reads and
    feeds the model) encodes and decodes, and a header claiming one pixel more is refused."""
    frames = np.zeros((2, 16, 8192, 3), np.uint8)
    frames[:, :, ::64] = 255
    (tmp_path / "wide").mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / "wide" / f"{i}.png"), frame)
    made = vd("encode", tmp_path / "wide", "-o", tmp_path / "wide.vaelat", "--model", frame_model, "--size",
              0, "-q")
    assert made.returncode == 0, made.stderr
    dec = vd("decode", tmp_path / "wide.vaelat", "-o", tmp_path / "wide.mkv", "--model", frame_model, "-q")
    assert dec.returncode == 0, dec.stderr
    assert read_video(tmp_path / "wide.mkv").shape == (2, 16, 8192, 3)
    forge_sizes(tmp_path / "wide.vaelat", tmp_path / "wider.vaelat", [8193, 16])
    result = vd("decode", tmp_path / "wider.vaelat", "-o", tmp_path / "wider.mkv", "--model", frame_model)
    assert_one_line_error(result, "source_size must be 2 integers (width, height) from 1 to 8192")
    assert not (tmp_path / "wider.mkv").exists()


def test_a_header_rate_below_what_a_video_holds_decodes_at_25_with_one_note(vd, encoded, frame_model, tmp_path):
    """fps 1e-6 in a header (not covered by the checksum): written at 25 frames/s with one note line, where
    FFmpeg wrote 24 without a word."""
    import av

    payload, header = split(encoded)
    header["fps"] = 1e-6
    assemble(tmp_path / "slow.vaelat", payload, header)
    result = vd("decode", tmp_path / "slow.vaelat", "-o", tmp_path / "out.mp4", "--model", frame_model, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"note: {tmp_path / 'slow.vaelat'} gives a frame rate of 1e-06, below the 0.002 frames/s a video file "
        f"holds: writing 25 frames/s (--fps sets another)"]
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert container.streams.video[0].average_rate == 25
