"""The .vaelat container: streamed writes round-trip exactly in fp16; damaged files are refused clearly."""

import numpy as np
import pytest

from vae_deploy.errors import DataError, InputShapeError
from vae_deploy.runtime.latents import LatentHeader, LatentReader, LatentWriter


def _header(**overrides):
    base = dict(model_sha256="ab" * 32, model_kind="frame", latent_shape=[4, 3, 5], fps=25.0, frame_count=9,
                source_size=[40, 24], working_size=[40, 24], fit={"policy": "pad"})
    base.update(overrides)
    return LatentHeader(**base)


def _write(path, latents, chunk=4):
    with LatentWriter(path, _header()) as writer:
        for start in range(0, len(latents), chunk):
            writer.write(latents[start:start + chunk])


def test_round_trip_in_chunks(tmp_path):
    latents = np.random.default_rng(0).standard_normal((9, 4, 3, 5)).astype(np.float32)
    _write(tmp_path / "clip.vaelat", latents)
    reader = LatentReader(tmp_path / "clip.vaelat")
    assert reader.header.latent_frames == 9
    assert reader.header.fit == {"policy": "pad"}
    restored = np.concatenate(list(reader.chunks(2)))
    np.testing.assert_array_equal(restored, latents.astype(np.float16))
    assert not list(tmp_path.glob(".*part"))  # no temporary file left behind


def test_wrong_chunk_shape_names_expected_shape(tmp_path):
    writer = LatentWriter(tmp_path / "x.vaelat", _header())
    with pytest.raises(InputShapeError, match=r"\(T, 4, 3, 5\)"):
        writer.write(np.zeros((2, 4, 3, 6), np.float32))
    writer.abort()
    assert not (tmp_path / "x.vaelat").exists()


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
