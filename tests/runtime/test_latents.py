"""The .vaelat container: streamed writes round-trip exactly in fp16; damaged files are refused clearly."""

import hashlib
import json
import struct

import numpy as np
import pytest

from vae_deploy.errors import DataError, InputShapeError
from vae_deploy.runtime.latents import MAGIC, VERSION, LatentHeader, LatentReader, LatentWriter

FIT = {"mode": "snap", "short_side": 0, "source_size": [40, 24], "content_size": [40, 24],
       "model_size": [40, 24], "channels": 3}


def _header(**overrides):
    base = dict(model_fingerprint="ab" * 32, model_kind="frame", latent_shape=[4, 3, 5], fps=25.0,
                frame_count=9, source_size=[40, 24], working_size=[40, 24], fit=dict(FIT), chunk=4)
    base.update(overrides)
    return LatentHeader(**base)


def _write(path, latents, chunk=4, **overrides):
    with LatentWriter(path, _header(**overrides)) as writer:
        for start in range(0, len(latents), chunk):
            writer.write(latents[start:start + chunk])


def _split(path):
    """(payload bytes, header dict) of a .vaelat file."""
    data = path.read_bytes()
    header_len, _ = struct.unpack("<Q8s", data[-16:])
    return data[len(MAGIC):-16 - header_len], json.loads(data[-16 - header_len:-16])


def _assemble(path, payload, header):
    text = json.dumps(header).encode()
    path.write_bytes(MAGIC + payload + text + struct.pack("<Q8s", len(text), MAGIC))


def test_round_trip_in_chunks(tmp_path):
    latents = np.random.default_rng(0).standard_normal((9, 4, 3, 5)).astype(np.float32)
    _write(tmp_path / "clip.vaelat", latents)
    reader = LatentReader(tmp_path / "clip.vaelat")
    assert reader.header.latent_frames == 9 and reader.header.version == VERSION == 2
    assert reader.header.fit == FIT and reader.header.model_fingerprint == "ab" * 32
    restored = np.concatenate(list(reader.chunks(2)))
    np.testing.assert_array_equal(restored, latents.astype(np.float16))
    assert not list(tmp_path.glob(".*part*"))  # no temporary file left behind


def test_the_header_carries_the_sha256_of_the_latent_bytes(tmp_path):
    latents = np.random.default_rng(1).standard_normal((9, 4, 3, 5)).astype(np.float32)
    _write(tmp_path / "clip.vaelat", latents)
    payload, header = _split(tmp_path / "clip.vaelat")
    assert payload == latents.astype(np.float16).tobytes()
    assert header["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert "model_sha256" not in header and header["model_fingerprint"] == "ab" * 32


def test_a_flipped_payload_bit_is_refused(tmp_path):
    path = tmp_path / "clip.vaelat"
    _write(path, np.ones((9, 4, 3, 5), np.float32))
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"clip.vaelat is damaged: .*payload_sha256"):
        LatentReader(path)


def test_version_1_files_still_read(tmp_path):
    """Version 1: no checksum, the model fingerprint under its old name model_sha256, maybe no chunk."""
    latents = np.random.default_rng(2).standard_normal((9, 4, 3, 5)).astype(np.float16)
    header = {"model_sha256": "cd" * 32, "model_kind": "frame", "latent_shape": [4, 3, 5], "fps": 25.0,
              "frame_count": 9, "latent_frames": 9, "source_size": [40, 24], "working_size": [40, 24],
              "fit": FIT, "dtype": "float16", "format": "vae-deploy-latents", "version": 1}
    _assemble(tmp_path / "old.vaelat", latents.tobytes(), header)
    reader = LatentReader(tmp_path / "old.vaelat")
    assert reader.header.model_fingerprint == "cd" * 32 and reader.header.payload_sha256 == ""
    assert reader.header.chunk == 0 and reader.header.version == 1
    np.testing.assert_array_equal(np.asarray(reader.latents), latents)


def test_two_writers_of_one_path_each_publish_a_whole_file(tmp_path):
    """Open at the same time (as two processes would be): each writes its own temporary file, so the
    published file is one writer's, whole; the other's close does not fail."""
    path = tmp_path / "clip.vaelat"
    a = np.full((9, 4, 3, 5), 1.0, np.float32)
    b = np.full((5, 2, 6, 5), 2.0, np.float32)
    first = LatentWriter(path, _header())
    second = LatentWriter(path, _header(latent_shape=[2, 6, 5], frame_count=5))
    assert first._out.tmp != second._out.tmp
    first.write(a[:4])
    second.write(b[:4])
    first.write(a[4:])
    second.write(b[4:])
    first.close()
    second.close()
    reader = LatentReader(path)
    assert reader.header.latent_shape == [2, 6, 5] and reader.header.latent_frames == 5
    np.testing.assert_array_equal(np.asarray(reader.latents), b.astype(np.float16))
    assert not list(tmp_path.glob(".*part*"))


def test_wrong_chunk_shape_names_expected_shape(tmp_path):
    writer = LatentWriter(tmp_path / "x.vaelat", _header())
    with pytest.raises(InputShapeError, match=r"\(T, 4, 3, 5\)"):
        writer.write(np.zeros((2, 4, 3, 6), np.float32))
    writer.abort()
    assert not (tmp_path / "x.vaelat").exists()
    assert not list(tmp_path.glob(".*part*"))


@pytest.mark.parametrize("damage", ["truncate", "not-latents", "empty"])
def test_damaged_files_are_refused(tmp_path, damage):
    path = tmp_path / "clip.vaelat"
    _write(path, np.zeros((9, 4, 3, 5), np.float32))
    data = path.read_bytes()
    damaged = {"truncate": data[:-20], "not-latents": b"\x00\x00\x00 ftypmp42" + data[12:], "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(DataError):
        LatentReader(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        LatentReader(tmp_path / "nope.vaelat")


def test_latents_get_the_mode_of_any_new_file(tmp_path):
    import stat

    _write(tmp_path / "clip.vaelat", np.zeros((9, 4, 3, 5), np.float32))
    (tmp_path / "plain.txt").write_text("")  # 0666 less the umask, as every new file
    mode = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "clip.vaelat").stat().st_mode) == mode


@pytest.mark.parametrize("value", [1e5, np.inf, np.nan], ids=["beyond-65504", "inf", "nan"])
def test_the_writer_refuses_latents_that_are_not_finite_in_fp16(tmp_path, value):
    """The last guard of every .vaelat (encode, run --latents, encode-dataset): a chunk that is not finite in
    fp16 is refused, the file is not published and no temporary is left."""
    latents = np.zeros((2, 4, 3, 5), np.float32)
    latents[1, 2, 1, 3] = value
    with LatentWriter(tmp_path / "clip.vaelat", _header()) as writer:
        writer.write(latents[:1])
        with pytest.raises(DataError, match="latents overflow fp16"):
            writer.write(latents[1:])
        writer.abort()
    assert list(tmp_path.iterdir()) == []
