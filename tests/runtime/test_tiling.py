"""Spatial tiling (runtime/tiling.py, tile_plan.py, tiled_stream.py; export/tiling.py writes the record).

Exact models: tiles with the halo measured at export give the untiled outputs (max abs <= 1e-4) on real
frames, over several chunks (each tile carries its own state). The blended AutoencoderKL: PSNR against its
untiled output at least that of diffusers' own enable_tiling at the same tile size. The record in the
manifest, and what the planner refuses. Every model here is a shared session export (no export of its own).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from external_zoo import external_folder, external_model  # noqa: F401 (pytest fixtures)

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.runtime.manifest import read_manifest
from vae_deploy.runtime.registry import load_runner
from vae_deploy.runtime.tile_plan import (
    OFF,
    TilePlanner,
    TileRequest,
    parse_budget,
    parse_tile,
)
from vae_deploy.runtime.tiled_stream import TiledStream
from vae_deploy.runtime.tiling import BLEND, EXACT, NONE, UNRECORDED, tile_records
from vae_deploy.video.fit import plan_fit
from vae_deploy.video.latent_codec import LatentCodec
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source

TILE = 64  # pixels: frames of 160x128 then run in 3 x 2 tiles
OWN_MODELS = ("causal3d-t2", "temporal")  # conv stacks with state; a Transformer over time per position
EXTERNAL_EXACT = ("tiny",)  # diffusers AutoencoderTiny


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """12 real frames of the packaged clip fitted to 160x128, (T, 3, H, W) float32 in [0, 1]."""
    with open_source(sample_video_path("carphone_pristine")) as source:
        raw = [frame for _, frame in zip(range(12), source, strict=False)]
    policy = plan_fit((raw[0].shape[1], raw[0].shape[0]), 128, 8, 3, "snap")
    return np.stack([policy.fit(frame) for frame in raw])


def model_dir(name, tiny_video_model, external_model):  # noqa: F811 (fixture)
    return external_model(name).model_dir if name in EXTERNAL_EXACT else tiny_video_model(name)


@pytest.mark.parametrize("name", OWN_MODELS + EXTERNAL_EXACT)
def test_exact_tiles_equal_whole_frames_over_several_chunks(name, frames, tiny_video_model,
                                                            external_model):  # noqa: F811 (fixture)
    folder = model_dir(name, tiny_video_model, external_model)
    with load_runner(folder, "ort-cpu", threads=1) as runner:
        f = runner.graph("encoder").dim_multiples.get("frames", 1)
        whole = runner.open_stream()
        tiled = TiledStream(runner, TilePlanner(runner.manifest, TileRequest(TILE)))
        worst = {"encoder": 0.0, "decoder": 0.0}
        for start in range(0, len(frames), 2 * f):  # three chunks: the state of each tile carries over
            chunk = frames[None, start:start + 2 * f]
            mu, mu_tiled = whole.encode(chunk)[0], tiled.encode(chunk)[0]
            worst["encoder"] = max(worst["encoder"], float(np.abs(mu - mu_tiled).max()))
            video, video_tiled = whole.decode(mu), tiled.decode(mu)
            worst["decoder"] = max(worst["decoder"], float(np.abs(video - video_tiled).max()))
        assert tiled.tiles("encoder").count == 6 and tiled.tiles("decoder").count == 6  # really tiled
    print(f"{name}: max abs tiled vs untiled {worst}")
    assert max(worst.values()) <= 1e-4, worst


def test_the_measured_halo_is_what_exactness_needs(frames, tiny_video_model):
    """Half the recorded halo is not enough: the halo measured at export is not oversized by a guess."""
    with load_runner(tiny_video_model("causal3d-t2"), "ort-cpu", threads=1) as runner:
        planner = TilePlanner(runner.manifest, TileRequest(TILE))
        group = planner.groups["encoder"]
        planner.groups["encoder"] = dataclasses.replace(group, halo=group.halo // 2 // 8 * 8)
        chunk = frames[None, :4]
        mu = runner.open_stream().encode(chunk)[0]
        short = TiledStream(runner, planner).encode(chunk)[0]
    assert np.abs(mu - short).max() > 1e-3


def test_the_manifest_records_how_each_graph_tiles(tiny_video_model, tiny_kl_model):
    manifest = read_manifest(tiny_video_model("causal3d-t2"))
    enc, dec = manifest.tiling["encoder"], manifest.tiling["decoder"]
    assert enc["mode"] == dec["mode"] == EXACT
    assert enc["align"] == 8 and enc["halo"] % 8 == 0 and enc["halo"] > 0  # pixels, on the output grid
    assert dec["align"] == 1 and 0 < dec["halo"] < 16  # latent positions
    assert enc["bytes_per_position"] > 0 and dec["bytes_per_position"] > enc["bytes_per_position"]
    kl = read_manifest(tiny_kl_model).tiling
    assert {kl["encoder"]["mode"], kl["decoder"]["mode"]} == {BLEND}
    assert "GroupNorm" in kl["decoder"]["why"]


def test_a_folder_without_the_record_runs_untiled_and_refuses_a_tile(tiny_video_model, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_video_model("causal3d-t2"), old)
    data = json.loads((old / "manifest.json").read_text())
    del data["tiling"]
    (old / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(old)
    assert {r.mode for r in tile_records(manifest).values()} == {NONE}
    assert TilePlanner(manifest, TileRequest("auto", "1KB")).plan("encoder", 128, 160) is None
    with pytest.raises(ConfigError, match=re.escape(f"--tile 64: {UNRECORDED} to tile it; --tile auto runs")):
        TilePlanner(manifest, TileRequest(TILE))


def test_the_planner_refuses_what_cannot_tile_in_one_line(tiny_video_model):
    manifest = read_manifest(tiny_video_model("causal3d-t2"))
    halo = manifest.tiling["encoder"]["halo"]
    for request, fragment in ((TileRequest(60), "not a multiple of 8 pixels .*; use 56 or 64"),
                              (TileRequest(halo - 8), f"smaller than this model's halo: each encoder tile "
                                                      f"reads {halo} px"),
                              (TileRequest(TILE, "1KB"), "--tile-budget 1 KB is too small for one 64 px")):
        with pytest.raises(ConfigError, match=fragment) as caught:
            TilePlanner(manifest, request)
        assert "\n" not in str(caught.value)
    auto = TilePlanner(manifest, TileRequest("auto", "1KB"))
    with pytest.raises(ConfigError, match="too small for this model at 160x128"):
        auto.check_frame(160, 128)
    for text, fragment in (("abc", "--tile must be a size in pixels, auto or off"), ("0", "positive"),
                           ("-64", "--tile must be")):
        with pytest.raises(ConfigError, match=fragment):
            parse_tile(text)
    for text in ("xyz", "4 parsecs", "0", ""):
        with pytest.raises(ConfigError, match="--tile-budget"):
            parse_budget(text)
    assert parse_budget("4GB") == 4 * 10**9 and parse_budget("1.5GiB") == 3 * 2**29
    assert parse_tile("AUTO") == "auto" and parse_tile(" off ") == OFF and parse_tile("128") == 128
    off = TilePlanner(manifest, TileRequest(OFF))  # a planner asked for no tiles: none, and no refusal
    assert not off.active and off.plan("encoder", 1080, 1920) is None


def test_auto_tiles_only_what_does_not_fit_and_stays_exact(frames, tiny_video_model):
    folder = tiny_video_model("causal3d-t2")
    with load_runner(folder, "ort-cpu", threads=1) as runner:
        default = TiledStream(runner, TilePlanner(runner.manifest, TileRequest()))
        chunk = frames[None, :4]
        mu = runner.open_stream().encode(chunk)[0]
        assert np.array_equal(default.encode(chunk)[0], mu) and default.tiles("encoder") is None
        # frames of 320x256 and a budget that holds a 64 px tile with its halo, not the whole frame
        large = chunk.repeat(2, axis=-1).repeat(2, axis=-2)
        halo = runner.manifest.tiling["encoder"]["halo"]
        per = runner.manifest.tiling["encoder"]["bytes_per_position"]
        budget = int(per * (TILE + 2 * halo) ** 2) + 1
        auto = TiledStream(runner, TilePlanner(runner.manifest, TileRequest("auto", budget)))
        assert np.abs(auto.encode(large)[0] - runner.open_stream().encode(large)[0]).max() <= 1e-4
        assert auto.tiles("encoder").tile == TILE and auto.tiles("encoder").count == 4 * 5
        # a tile as large as the frame is no error: the frame runs whole
        whole = TiledStream(runner, TilePlanner(runner.manifest, TileRequest(512)))
        assert np.array_equal(whole.encode(chunk)[0], mu) and whole.tiles("encoder") is None
        tiled = TiledStream(runner, TilePlanner(runner.manifest, TileRequest(TILE)))
        tiled.encode(chunk)
        with pytest.raises(InputShapeError, match="frame size changed mid-stream"):
            tiled.encode(chunk[..., :64, :64])


def test_the_codec_tiles_every_command_alike(frames, tiny_video_model):
    """LatentCodec (run, encode, decode, encode-dataset and FrameStream stream through it): fp16 latents and
    frames with tiles equal those without, across chunks."""
    with load_runner(tiny_video_model("causal3d-t2"), "ort-cpu", threads=1) as runner:
        plain = LatentCodec(runner)
        tiled = LatentCodec(runner, tiling=TileRequest(TILE), model_size=(160, 128))
        for start in (0, 4, 8):
            chunk = frames[start:start + 4]
            latents, tiled_latents = plain.encode(chunk), tiled.encode(chunk)
            assert np.abs(latents.astype(np.float32) - tiled_latents).max() <= 1e-3  # one fp16 step at most
            assert np.abs(plain.decode(latents) - tiled.decode(latents)).max() <= 1e-4


def test_blended_kl_tiles_are_at_least_as_close_as_diffusers_own_tiling(frames, external_model,  # noqa: F811
                                                                        external_folder):  # noqa: F811
    import torch
    from diffusers import AutoencoderKL

    notes = []
    with load_runner(external_model("kl-sd").model_dir, "ort-cpu", threads=1) as runner:
        mu = runner.open_stream().encode(frames[None, :2])[0]
        whole = runner.open_stream().decode(mu)[0]
        tiled = TiledStream(runner, TilePlanner(runner.manifest, TileRequest(TILE), notes.append))
        ours = tiled.decode(mu)[0]
        assert tiled.tiles("decoder").mode == BLEND and tiled.tiles("decoder").count > 1
    assert len(notes) == 1 and "blended, not exact" in notes[0]
    vae = AutoencoderKL.from_pretrained(str(external_folder("kl-sd"))).eval()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    with torch.no_grad():
        z = torch.from_numpy(mu[0])
        theirs_whole = vae.decode(z).sample
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = TILE, TILE // factor
        theirs_tiled = vae.decode(z).sample

    def psnr(a, b) -> float:
        a, b = np.clip(a, 0, 1), np.clip(b, 0, 1)
        return float(10 * np.log10(1 / np.mean((a - b) ** 2)))

    ours_psnr = psnr(whole, ours)
    theirs_psnr = psnr(((theirs_whole + 1) / 2).numpy(), ((theirs_tiled + 1) / 2).numpy())
    print(f"kl-sd decode at {TILE} px tiles: PSNR vs untiled ours {ours_psnr:.2f} dB, diffusers' "
          f"{theirs_psnr:.2f} dB")
    assert ours_psnr >= theirs_psnr


# px: at least the decoder's halo (72 and 144 px), so that the 160x128 frames run in 2 x 2 and 2 x 1 tiles
WAN_TILE = {"wan2.1": 80, "wan2.2": 144}


def wan_stream_outputs(stream, frames: np.ndarray, cuts: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Frames through `stream` in chunks ending at `cuts` (the first chunk holds Wan's first frame), each
    chunk's latents decoded as they come: (latents, video), joined along time."""
    latents, videos, start = [], [], 0
    for end in cuts:
        mu = stream.encode(frames[None, start:end])[0]
        latents.append(mu)
        videos.append(stream.decode(mu))
        start = end
    return np.concatenate(latents, axis=1), np.concatenate(videos, axis=1)


@pytest.mark.parametrize("name", ("wan2.1", "wan2.2"))
@pytest.mark.parametrize("cuts", [(1, 5, 9), (5, 9)], ids=["first-alone", "first-in-a-chunk"])
def test_wan_tiles_exactly_through_its_graphs_split_at_latent_resolution(name, cuts, frames,
                                                                          external_model):  # noqa: F811
    """Wan's attention sees a whole latent frame, so its graphs come in parts (export writes them and joins
    them into the whole graphs): tiles of the pixel parts, the latent parts whole, equal untiled output
    over a clip of 1 + 4k real frames, each tile with its own state and first-chunk rule. Tiles of the
    whole graphs would not be exact: the parts are what makes it."""
    folder = external_model(name).model_dir
    records = tile_records(read_manifest(folder))
    assert records["encoder"].parts == (("encoder_pixels", True), ("encoder_latents", False))
    assert records["decoder"].parts == (("decoder_latents", False), ("decoder_pixels", True))
    assert records["decoder_pixels"].mode == EXACT and records["decoder_latents"].mode == NONE
    assert records["decoder"].halo == records["decoder_pixels"].halo > 0
    with load_runner(folder, "ort-cpu", threads=1) as runner:
        whole = wan_stream_outputs(runner.open_stream(), frames, cuts)
        tiled_stream = TiledStream(runner, TilePlanner(runner.manifest, TileRequest(WAN_TILE[name])))
        tiled = wan_stream_outputs(tiled_stream, frames, cuts)
        assert tiled_stream.tiles("encoder").count >= 2 and tiled_stream.tiles("decoder").count >= 2
        errors = [float(np.abs(a - b).max()) for a, b in zip(whole, tiled, strict=True)]
        print(f"{name} {cuts}: max abs tiled vs untiled, latents {errors[0]:.2e}, video {errors[1]:.2e}")
        assert max(errors) <= 1e-4, errors
        if cuts != (1, 5, 9):
            return
        planner = TilePlanner(runner.manifest, TileRequest(WAN_TILE[name]))
        for graph in ("encoder", "decoder"):  # the whole graphs in tiles: attention over a tile only
            planner.groups[graph] = dataclasses.replace(planner.groups[graph], parts=())
        naive = wan_stream_outputs(TiledStream(runner, planner), frames, cuts)
    assert float(np.abs(whole[0] - naive[0]).max()) > 1e-3


@pytest.mark.slow  # reads the Wan 2.1 export
def test_a_split_model_loads_its_parts_only_when_a_tiled_stream_runs_them(frames,
                                                                          external_model):  # noqa: F811
    folder = external_model("wan2.1").model_dir
    with load_runner(folder, "ort-cpu", threads=1) as runner:
        parts = runner.manifest.part_graphs
        assert parts == {f"{graph}_{part}{first}" for graph in ("encoder", "decoder")
                         for part in ("pixels", "latents") for first in ("", "_first")}
        runner.open_stream().encode(frames[None, :5])
        assert runner._unloaded == parts  # an untiled stream runs the whole graphs alone
        TiledStream(runner, TilePlanner(runner.manifest, TileRequest(80))).encode(frames[None, :5])
        assert runner._unloaded == {p for p in parts if p.startswith("decoder")}
