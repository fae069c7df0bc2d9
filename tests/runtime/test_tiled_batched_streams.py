"""TiledBatchedStreams (runtime/tiled_batched_streams.py): tiled streams whose tiles, of one stream or of
several, share graph calls along the batch axis, each (stream, tile) pair a slot of its own.

Each stream's outputs equal that stream run alone through TiledStream. Measured here: bit for bit on
ort-cpu with one thread, for the exact models (the packaged default model, causal3d-t2 with its state and
temporal factor) and the blended AutoencoderKL alike; within 1e-5 on torch (asserted; its batched
convolutions sum in another order). Exact tiles also equal untiled output within 1e-4 (asserted; measured
0.0 on these models). Real frames of the packaged clip, real ONNX Runtime sessions, shared model exports
only (no export of its own).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from vae_deploy.errors import ConfigError, InputShapeError, VaeDeployError
from vae_deploy.runtime.registry import load_runner
from vae_deploy.runtime.tile_plan import BLEND, EXACT, TilePlanner, TileRequest
from vae_deploy.runtime.tiled_batched_streams import TiledBatchedStreams
from vae_deploy.runtime.tiled_stream import TiledStream
from vae_deploy.video.default_model import DEFAULT_MODEL_DIR
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source

TILE = 64
# (height, width): 2x2 tiles, 2x3 tiles, and frames no larger than a tile (one whole slot, no plan)
SIZES = {"a": (96, 128), "b": (128, 160), "c": (64, 64)}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """The first 12 frames of carphone_pristine, float32 (1, 12, 3, 144, 176) in [0, 1]."""
    with open_source(sample_video_path("carphone_pristine")) as source:
        frames = source.read(max_frames=12)
    return (frames.astype(np.float32) / 255).transpose(0, 3, 1, 2)[None]


def _crop(clip: np.ndarray, name: str, start: int, length: int) -> np.ndarray:
    h, w = SIZES[name]
    y, x = {"a": (0, 0), "b": (16, 8), "c": (40, 56)}[name]
    return np.ascontiguousarray(clip[:, start:start + length, :, y:y + h, x:x + w])


def _spy(runner) -> list[tuple[str, int]]:
    """Every call the runner makes through its public `run`: (graph, batch rows)."""
    calls: list[tuple[str, int]] = []
    run = runner.run

    def spy(graph, inputs, past=None):
        first = inputs[runner.graph(graph).inputs[0].name]
        calls.append((graph, first.shape[0]))
        return run(graph, inputs, past)

    runner.run = spy
    return calls


def _compare(got, want, exact: bool) -> float:
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    return float(np.abs(got - want).max())


def _join_and_leave(runner, request: TileRequest, clip, rounds, bits: bool, untiled: bool,
                    rows: int | None = None) -> dict:
    """Run `rounds` (names of the streams live in each round; a name joins at its first round and leaves
    after its last) through one TiledBatchedStreams, each stream also alone through TiledStream (and
    untiled), comparing every chunk's latents and frames. -> the worst differences and the tiles."""
    f = runner.graph("encoder").dim_multiples.get("frames", 1)
    length = 2 * f
    batched = TiledBatchedStreams(runner, TilePlanner(runner.manifest, request), rows=rows)
    ids, alone, whole, done = {}, {}, {}, {}
    worst = {"alone": 0.0, "untiled": 0.0}
    tiles = {}
    for live in rounds:
        for name in [n for n in ids if n not in live]:
            batched.remove(ids.pop(name))
        for name in live:
            if name not in ids:
                ids[name], done[name] = batched.add(), 0
                alone[name] = TiledStream(runner, TilePlanner(runner.manifest, request))
                whole[name] = runner.open_stream()
        chunks = {name: _crop(clip, name, done[name], length) for name in live}
        mus = batched.encode({ids[n]: c for n, c in chunks.items()})
        frames = batched.decode({ids[n]: mus[ids[n]][0] for n in live})
        for name, chunk in chunks.items():
            done[name] += length
            tiles[name] = batched.tiles(ids[name], "encoder")
            mu = alone[name].encode(chunk)[0]
            worst["alone"] = max(worst["alone"], _compare(mus[ids[name]][0], mu, bits),
                                 _compare(frames[ids[name]], alone[name].decode(mu), bits))
            if untiled:
                mu_whole = whole[name].encode(chunk)[0]
                video_whole = whole[name].decode(mu_whole)
                worst["untiled"] = max(worst["untiled"], float(np.abs(mus[ids[name]][0] - mu_whole).max()),
                                       float(np.abs(frames[ids[name]] - video_whole).max()))
    assert len(batched) == len(rounds[-1])
    return {"worst": worst, "tiles": tiles}


ROUNDS = [("a", "b"), ("a", "b", "c"), ("b", "c")]  # c joins in round 2, a leaves after it


@pytest.mark.parametrize("model, backend", [("default", "ort-cpu"), ("causal3d-t2", "ort-cpu"),
                                            ("causal3d-t2", "torch")])
def test_exact_tiled_streams_joining_and_leaving_equal_tiled_stream_alone(model, backend, clip,
                                                                          tiny_video_model):
    """Three streams of three frame sizes over three rounds (one joins, one leaves): each stream's latents
    and frames equal TiledStream alone (bits on ort-cpu, 1e-5 on torch) and untiled within 1e-4; the tiles
    of equal shape share calls."""
    folder = DEFAULT_MODEL_DIR if model == "default" else tiny_video_model(model)
    with load_runner(folder, backend, threads=1) as runner:
        calls = _spy(runner)
        found = _join_and_leave(runner, TileRequest(TILE), clip, ROUNDS, backend == "ort-cpu", True)
    print(f"{model} on {backend}: max abs vs TiledStream alone {found['worst']['alone']:.3g}, vs untiled "
          f"{found['worst']['untiled']:.3g}")
    tiles = found["tiles"]
    assert tiles["b"].mode == EXACT and tiles["b"].count == 6 and tiles["c"] is None  # c: one whole slot
    assert found["worst"]["untiled"] <= 1e-4, found
    # round 1's encoder: a's 4 tiles and b's 6 in as few calls as their shapes allow, not 10 calls
    assert any(rows > 1 for _, rows in calls) and len(calls) < len(ROUNDS) * 2 * (4 + 6 + 1)


def test_blended_tiles_equal_tiled_stream_alone(clip, tiny_kl_model):
    """The blended AutoencoderKL: each stream's cross-faded output equals TiledStream alone, to the bit."""
    with load_runner(tiny_kl_model, "ort-cpu", threads=1) as runner:
        found = _join_and_leave(runner, TileRequest(TILE), clip, [("a", "b"), ("b", "c")], True, False)
    assert found["tiles"]["b"].mode == BLEND and found["tiles"]["b"].count > 1
    assert found["worst"]["alone"] == 0.0


def test_rows_bound_each_call_and_auto_counts_them(clip):
    """`rows` bounds the batch of every call, and `--tile auto` budgets a call of that many tiles: a budget
    that holds one stream's whole frame (144x176) tiles two streams sharing calls, with the same output."""
    with load_runner(DEFAULT_MODEL_DIR, "ort-cpu", threads=1) as runner:
        spec = runner.graph("encoder")
        steps = min(2, runner.call_limit(spec) or 2)  # frames of a 2-frame chunk one call takes
        per = runner.manifest.tiling["encoder"]["bytes_per_position"]
        request = TileRequest("auto", int(1.7 * per * 144 * 176 * steps))  # one whole frame fits, two not
        calls = _spy(runner)
        batched = TiledBatchedStreams(runner, TilePlanner(runner.manifest, request), rows=2)
        alone = TiledBatchedStreams(runner, TilePlanner(runner.manifest, request), rows=1)
        ids, one = [batched.add(), batched.add()], alone.add()
        chunks = {ids[0]: clip[:, :2], ids[1]: np.ascontiguousarray(clip[:, 2:4])}
        mus = batched.encode(chunks)
        tiles = batched.tiles(ids[0], "encoder")
        assert tiles is not None and tiles.count > 1  # tiled: the budget counts a call of 2 rows
        assert max(rows for _, rows in calls) == 2
        whole = alone.encode({one: clip[:, :2]})[one][0]
        assert alone.tiles(one, "encoder") is None  # alone, the frame fits the budget whole
        assert np.abs(mus[ids[0]][0] - whole).max() <= 1e-4


def test_a_refused_chunk_changes_no_stream(clip):
    """A round run in several steps (`rows`) is all or nothing: a chunk refused in a later step puts back
    the state the earlier steps advanced, and the refusal names the stream (and its tile); a frame size
    that changes mid-stream and a closed id are refused in one line."""
    with load_runner(DEFAULT_MODEL_DIR, "ort-cpu", threads=1) as runner:
        request = TileRequest(TILE)
        batched = TiledBatchedStreams(runner, TilePlanner(runner.manifest, request), rows=1)
        alone = TiledStream(runner, TilePlanner(runner.manifest, request))
        a, b = batched.add(), batched.add()
        first = _crop(clip, "a", 0, 2)
        np.testing.assert_array_equal(batched.encode({a: first})[a][0], alone.encode(first)[0])
        wrong = np.zeros((1, 2, 4, 96, 128), np.float32)  # 4 channels: refused when its step is checked
        with pytest.raises(InputShapeError) as caught:
            batched.encode({a: _crop(clip, "a", 2, 2), b: wrong})
        assert re.match(rf"stream {b} \(tile \d\): encoder input 'video' must be float32", str(caught.value))
        assert "axis 2 is 4, not 3" in str(caught.value) and "\n" not in str(caught.value)
        assert batched.tiles(b, "encoder") is None  # its plan was not kept
        second = _crop(clip, "a", 2, 2)  # a's state is as before the refused round
        np.testing.assert_array_equal(batched.encode({a: second})[a][0], alone.encode(second)[0])
        with pytest.raises(InputShapeError, match=f"^stream {a}: encoder stream: frames of 64x64 after "
                                                  f"frames of 96x128 .*open a new stream"):
            batched.encode({a: _crop(clip, "c", 4, 2)})
        batched.remove(a)
        with pytest.raises(VaeDeployError, match=f"no open stream {a}"):
            batched.encode({a: second})
        with pytest.raises(ConfigError, match="--tile 60 is not a multiple of 8"):
            TilePlanner(runner.manifest, TileRequest(60))
