"""`--tile` / `--tile-budget` through the commands: run, encode, decode, encode-dataset and FrameStream give
with exact tiles what they give without; a blended model says so in one note; refusals are one line and
leave nothing behind (more rows in test_hostile_inputs.py). Models: the shared session exports."""

from __future__ import annotations

import numpy as np
import pytest
from cli_support import assert_one_line_error, cli_process, invoke_main
from external_zoo import external_folder, external_model  # noqa: F401 (pytest fixtures)
from torch_free_support import edge_cli

from vae_deploy.runtime.latents import LatentReader
from vae_deploy.video.frames import FrameStream
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source

CLIP = sample_video_path("carphone_pristine")  # 176x144: fitted to 160x128 at --size 128
COMMON = ["--size", "128", "--chunk", "4", "--max-frames", "12", "-q"]


@pytest.fixture
def vd(capsys, monkeypatch):
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


@pytest.fixture(scope="module")
def model(tiny_video_model):
    return tiny_video_model("causal3d-t2")


def latents_of(path) -> np.ndarray:
    reader = LatentReader(path)
    return np.concatenate(list(reader.chunks(1))).astype(np.float32)


def frames_of(path) -> np.ndarray:
    with open_source(path) as source:
        return np.stack(list(source)).astype(np.int16)


def test_run_with_tiles_writes_what_it_writes_without(vd, model, tmp_path):
    for tile in ("off", "64"):
        result = vd("run", CLIP, "--model", model, *COMMON, "--tile", tile, "--out", tmp_path / f"{tile}.mkv",
                    "--latents", tmp_path / f"{tile}.vaelat")
        assert result.returncode == 0, result.stderr
        assert "note:" not in result.stderr  # exact: nothing to say
    assert np.abs(latents_of(tmp_path / "off.vaelat") - latents_of(tmp_path / "64.vaelat")).max() <= 1e-3
    assert np.abs(frames_of(tmp_path / "off.mkv") - frames_of(tmp_path / "64.mkv")).max() <= 1  # FFV1: exact


def test_encode_and_decode_with_tiles_and_encode_dataset(vd, model, tmp_path):
    assert vd("encode", CLIP, "--model", model, *COMMON, "--tile", "off", "-o", tmp_path / "a.vaelat"
              ).returncode == 0
    assert vd("encode", CLIP, "--model", model, *COMMON, "--tile", "64", "--tile-budget", "1GB", "-o",
              tmp_path / "b.vaelat").returncode == 0
    assert np.abs(latents_of(tmp_path / "a.vaelat") - latents_of(tmp_path / "b.vaelat")).max() <= 1e-3
    for tile in ("off", "64"):
        result = vd("decode", tmp_path / "a.vaelat", "--model", model, "--tile", tile, "-q", "-o",
                    tmp_path / f"{tile}.mkv")
        assert result.returncode == 0, result.stderr
    assert np.abs(frames_of(tmp_path / "off.mkv") - frames_of(tmp_path / "64.mkv")).max() <= 1
    result = vd("encode-dataset", CLIP, "--model", model, "--workers", "1", *COMMON, "--tile", "64",
                "--out", tmp_path / "ds")
    assert result.returncode == 0, result.stderr
    (stored,) = (tmp_path / "ds").rglob("*.vaelat")
    assert np.abs(latents_of(tmp_path / "a.vaelat") - latents_of(stored)).max() <= 1e-3


def test_frame_stream_tiles_like_the_commands(model):
    with open_source(CLIP) as source:
        frames = [frame for _, frame in zip(range(8), source, strict=False)]
    results = {}
    for tile in ("off", 64):
        with FrameStream.open(model, (176, 144), chunk=4, short_side=128, tile=tile) as stream:
            results[tile] = [c for f in frames for c in stream.push(f)] + stream.flush()
    for plain, tiled in zip(results["off"], results[64], strict=True):
        assert np.abs(plain.latents.astype(np.float32) - tiled.latents).max() <= 1e-3
        assert np.abs(plain.frames.astype(np.int16) - tiled.frames).max() <= 1
    with pytest.raises(Exception, match="smaller than this model's halo"):
        FrameStream.open(model, (176, 144), chunk=4, short_side=128, tile=16)


def test_a_tile_below_the_halo_is_one_line_from_the_real_cli_and_writes_nothing(model, tmp_path):
    result = cli_process("run", CLIP, "--model", model, *COMMON, "--tile", "16", "--out", tmp_path / "o.mp4",
                         "--latents", tmp_path / "o.vaelat", timeout=120)
    assert_one_line_error(result, "--tile 16 is smaller than this model's halo", 2)
    assert list(tmp_path.iterdir()) == []


def test_tiles_run_on_the_edge_install_without_torch(model, tmp_path):
    result = edge_cli("encode", CLIP, "--model", model, *COMMON, "--tile", "64", "-o", tmp_path / "e.vaelat",
                      timeout=120)
    assert result.returncode == 0, result.stderr
    assert LatentReader(tmp_path / "e.vaelat").header.frame_count == 12


def test_a_blended_model_says_so_in_one_note(vd, external_model, tmp_path):  # noqa: F811 (fixture)
    result = vd("run", CLIP, "--model", external_model("kl-sd").model_dir, "--size", "128", "--max-frames",
                "2", "--tile", "64", "-q", "--out", tmp_path / "o.mkv")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "blended, not exact" in notes[0], result.stderr


def test_encode_dataset_of_a_blended_model_keeps_one_tiling_per_folder(vd, external_model, model, tmp_path):  # noqa: F811
    """Blended tiles give other latents than untiled ones, so dataset.json records the tile request of a
    blended model and a rerun asking for another is refused in one line; an exact model's tiles change
    nothing, and its folder takes any --tile."""
    kl = external_model("kl-sd").model_dir
    args = ["--size", "128", "--max-frames", "2", "-q", "--workers", "1"]
    result = vd("encode-dataset", CLIP, "--model", kl, *args, "--tile", "64", "--out", tmp_path / "kl")
    assert result.returncode == 0, result.stderr
    before = sorted(p.name for p in (tmp_path / "kl").rglob("*"))
    refused = vd("encode-dataset", CLIP, "--model", kl, *args, "--tile", "off", "--out", tmp_path / "kl")
    assert_one_line_error(refused, "holds latents made with --tile 64", code=2)
    assert sorted(p.name for p in (tmp_path / "kl").rglob("*")) == before
    for tile in ("64", "off"):
        result = vd("encode-dataset", CLIP, "--model", model, *COMMON, "--workers", "1", "--tile", tile,
                    "--out", tmp_path / "exact")
        assert result.returncode == 0, result.stderr


@pytest.mark.slow  # reads the Wan 2.1 export
def test_wan_tiles_through_run_encode_and_decode(vd, external_model, tmp_path):  # noqa: F811
    """Wan tiles exactly through its graphs split at latent resolution: `run --tile 80` on a clip of 7
    frames (not 1 + 4k) writes the latents and frames of the untiled run; a tile below the decoder's halo
    (72 px) is refused in one line by the commands that decode and accepted by `encode` (the encoder's
    halo is 40 px); several sources at once refuse its tiles in one line."""
    wan = external_model("wan2.1").model_dir
    args = ["--model", wan, "--size", "128", "--max-frames", "7", "--chunk", "4", "-q"]
    for tile in ("off", "80"):
        result = vd("run", CLIP, *args, "--tile", tile, "--out", tmp_path / f"{tile}.mkv",
                    "--latents", tmp_path / f"{tile}.vaelat")
        assert result.returncode == 0, result.stderr
        assert "note:" not in result.stderr
    assert np.abs(latents_of(tmp_path / "off.vaelat") - latents_of(tmp_path / "80.vaelat")).max() <= 1e-4
    assert np.abs(frames_of(tmp_path / "off.mkv") - frames_of(tmp_path / "80.mkv")).max() <= 1
    refused = vd("run", CLIP, *args, "--tile", "64", "--out", tmp_path / "r.mkv")
    assert_one_line_error(refused, "smaller than this model's halo", 2)
    refused = vd("decode", tmp_path / "off.vaelat", "--model", wan, "--tile", "64", "-q", "-o",
                 tmp_path / "r.mkv")
    assert_one_line_error(refused, "each decoder tile reads 72 px around it", 2)
    assert not (tmp_path / "r.mkv").exists()
    assert vd("encode", CLIP, *args, "--tile", "64", "-o", tmp_path / "e.vaelat").returncode == 0
    assert np.abs(latents_of(tmp_path / "off.vaelat") - latents_of(tmp_path / "e.vaelat")).max() <= 1e-4
    refused = vd("run", CLIP, CLIP, *args, "--tile", "80", "--out-dir", tmp_path / "many")
    assert_one_line_error(refused, "several streams at once do not do yet", 2)


def test_the_packaged_default_model_tiles_exactly(tmp_path, monkeypatch, capsys):
    """The default model (vae_deploy/assets/default_model, a temporal model) carries its tiling record:
    `encode --tile 64` writes the very bytes of the untiled encode."""
    clip = sample_video_path("carphone_pristine")
    outputs = {}
    for tile in ("off", "64"):
        outputs[tile] = tmp_path / f"{tile}.vaelat"
        result = invoke_main(monkeypatch, capsys, "encode", clip, "-o", outputs[tile], "--tile", tile,
                             "--max-frames", "8", "-q")
        assert result.returncode == 0, result.stderr
    assert outputs["off"].read_bytes() == outputs["64"].read_bytes()


def test_a_tile_is_checked_against_the_graphs_the_command_runs(vd, tmp_path):
    """The packaged model reads 48 px around an encoder tile but 5 latent positions (40 px) around a decoder
    tile: `decode --tile 40` runs, exact, where `encode --tile 40` is refused for the encoder's halo."""
    latents = tmp_path / "c.vaelat"
    assert vd("encode", CLIP, "--max-frames", "8", "-q", "-o", latents).returncode == 0
    refused = vd("encode", CLIP, "--max-frames", "8", "--tile", "40", "-q", "-o", tmp_path / "t.vaelat")
    assert_one_line_error(refused, "each encoder tile reads 48 px around it", 2)
    for tile in ("off", "40"):
        result = vd("decode", latents, "--tile", tile, "-q", "-o", tmp_path / f"{tile}.mkv")
        assert result.returncode == 0, result.stderr
    assert np.array_equal(frames_of(tmp_path / "off.mkv"), frames_of(tmp_path / "40.mkv"))
