"""BatchedStreams (runtime/batched_stream.py): several streams share graph calls along the batch axis, and
each stream's outputs equal that stream run alone through `runner.open_stream()`, on every backend that runs
here: bit for bit on ort-cpu with one thread (each batch row is computed by the same kernels as alone),
within 1e-5 on torch (whose convolutions sum a batch in another order: a few 1e-7 measured). Real frames of
the packaged carphone clip for the encoders, random latents for the decoders."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from external_zoo import external_folder, external_model  # noqa: F401 (pytest fixtures)
from torch_free_support import edge_env

from vae_deploy.errors import ConfigError, InputShapeError, VaeDeployError
from vae_deploy.runtime import load_runner
from vae_deploy.runtime.batched_stream import BatchedStreams
from vae_deploy.video.default_model import DEFAULT_MODEL_DIR
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source

BACKENDS = ("ort-cpu", "torch")
README = Path(__file__).parents[2] / "README.md"
CORNERS = ((0, 0), (40, 56), (80, 112), (16, 96))  # crops of the 176x144 clip: four different streams


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """The first 13 frames of carphone_pristine, float32 (1, 13, 3, 144, 176) in [0, 1]."""
    with open_source(sample_video_path("carphone_pristine")) as source:
        frames = source.read(max_frames=13)
    return (frames.astype(np.float32) / 255).transpose(0, 3, 1, 2)[None]


def _crop(clip: np.ndarray, corner: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    y, x = CORNERS[corner]
    return np.ascontiguousarray(clip[..., y:y + size[0], x:x + size[1]])


def _open(model_dir, backend: str):
    return load_runner(model_dir, backend, threads=1)


def _spy(runner) -> list[tuple[str, int]]:
    """Record every call the runner makes through its public `run` (graph, batch size)."""
    calls: list[tuple[str, int]] = []
    run = runner.run

    def spy(graph, inputs, past=None):
        first = inputs[runner.graph(graph).inputs[0].name] if isinstance(inputs, dict) else inputs[0]
        calls.append((graph, first.shape[0]))
        return run(graph, inputs, past)

    runner.run = spy
    return calls


def _same(backend: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Assert one stream's outputs equal its run alone (bits on ort-cpu, 1e-5 on torch); the max abs."""
    assert sorted(got) == sorted(want)
    worst = 0.0
    for name in want:
        assert got[name].shape == want[name].shape, name
        if backend == "ort-cpu":
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)
        worst = max(worst, float(np.abs(got[name] - want[name]).max()))
    return worst


def _rounds(runner, backend: str, graph: str, rounds: list[dict[str, np.ndarray]]) -> None:
    """Run `rounds` (stream name -> chunk; a name appears from the round it joins; a name missing from a
    round after it joined leaves) batched and each stream alone, comparing every round's outputs."""
    batched = runner.open_batched_streams()
    ids: dict[str, int] = {}
    alone = {}
    for chunks in rounds:
        for name in [n for n in ids if n not in chunks]:
            batched.remove(ids.pop(name))
        for name in chunks:
            if name not in ids:
                ids[name], alone[name] = batched.add(), runner.open_stream()
        got = batched.step(graph, {ids[n]: c for n, c in chunks.items()})
        assert sorted(got) == sorted(ids.values())
        for name, chunk in chunks.items():
            _same(backend, got[ids[name]], alone[name].step(graph, chunk))
    assert len(batched) == len(rounds[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_streams_equal_each_run_alone_joining_and_leaving(tiny_video_model, clip, backend):
    """Three streams over four rounds of the causal 3D model (temporal factor 2, state in both graphs), a
    fourth joining in round 2 from its zero state and one leaving after round 3, with chunks of 2 and 4
    frames in the same round: every chunk's outputs equal that stream alone, and streams of one shape share
    calls (ort-cpu runs one step, 2 frames, per call, so longer chunks take more calls)."""
    crops = [_crop(clip, i) for i in range(4)]
    frames = [{"a": crops[0][:, 0:4], "b": crops[1][:, 0:4], "c": crops[2][:, 0:2]},
              {"a": crops[0][:, 4:6], "b": crops[1][:, 4:6], "c": crops[2][:, 2:4], "d": crops[3][:, 0:4]},
              {"a": crops[0][:, 6:8], "b": crops[1][:, 6:10], "c": crops[2][:, 4:6], "d": crops[3][:, 4:6]},
              {"a": crops[0][:, 8:12], "c": crops[2][:, 6:8], "d": crops[3][:, 6:8]}]
    rng = np.random.default_rng(0)
    latents = [{name: rng.standard_normal((1, len(chunk[0]) // 2, 4, 8, 8)).astype(np.float32)
                for name, chunk in r.items()} for r in frames]
    with _open(tiny_video_model("causal3d-t2"), backend) as runner:
        calls = _spy(runner)
        _rounds(runner, backend, "encoder", frames)
        batched = [c for c in calls if c[1] > 1]
        assert batched, calls  # the rounds did share calls
        if backend == "torch":  # whole chunks per call: one call per chunk length
            assert calls[:2] == [("encoder", 2), ("encoder", 1)]
        _rounds(runner, backend, "decoder", latents)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_sizes_and_batch_sizes_in_one_round(tiny_video_model, clip, backend):
    """Streams of 64x64, 32x48 and 64x64 frames in one round (plus one stream of batch 2): one call per
    frame size, each stream's outputs equal alone; a stream's frame size cannot change mid-stream."""
    model = tiny_video_model("causal3d-t2")
    small = _crop(clip, 1, (32, 48))
    pair = np.concatenate([_crop(clip, 2), _crop(clip, 3)])  # one stream of batch 2
    rounds = [{"a": _crop(clip, 0)[:, 0:2], "b": small[:, 0:2], "c": pair[:, 0:2]},
              {"a": _crop(clip, 0)[:, 2:4], "b": small[:, 2:4], "c": pair[:, 2:4]}]
    with _open(model, backend) as runner:
        calls = _spy(runner)
        _rounds(runner, backend, "encoder", rounds)
        assert sorted(calls) == sorted([("encoder", 3), ("encoder", 1)] * 2)  # 64x64 rows: 1 + 2
        batched = runner.open_batched_streams()
        stream = batched.add()
        batched.step("encoder", {stream: _crop(clip, 0)[:, 0:2]})
        with pytest.raises(InputShapeError) as caught:
            batched.step("encoder", {stream: small[:, 2:4]})
        assert str(caught.value).startswith(f"stream {stream}: encoder stream: this chunk needs state")
        assert "open a new stream" in str(caught.value) and "\n" not in str(caught.value)


def test_pad_lets_chunk_lengths_share_a_call_on_a_stateless_graph(tiny_video_model, clip):
    """lengths="pad" on the frame model (stateless: every frame on its own): chunks of 4, 2 and 1 frames
    share one call, the shorter ones padded with their last frame whose outputs are dropped; the outputs
    equal each stream alone, bit for bit. "group" makes one call per length."""
    crops = [_crop(clip, i) for i in range(3)]
    chunks = [crops[0][:, :4], crops[1][:, :2], crops[2][:, :1]]
    with _open(tiny_video_model("frame"), "ort-cpu") as runner:
        calls = _spy(runner)
        want = [runner.open_stream().step("encoder", c) for c in chunks]
        for lengths, expected in (("pad", [("encoder", 3)]), ("group", [("encoder", 1)] * 3)):
            calls.clear()
            batched = runner.open_batched_streams(lengths)
            ids = [batched.add() for _ in chunks]
            got = batched.step("encoder", dict(zip(ids, chunks, strict=True)))
            assert calls == expected, lengths
            for i, w in zip(ids, want, strict=True):
                _same("ort-cpu", got[i], w)


def test_pad_never_pads_a_stateful_graph(tiny_video_model):
    """A stateful graph's state after a padded chunk would hold the padding: "pad" groups it by length
    (torch runs whole chunks per call, so the lengths would otherwise meet)."""
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((1, n, 4, 4, 4)).astype(np.float32) for n in (2, 1, 2)]
    with _open(tiny_video_model("causal3d-t2"), "torch") as runner:
        calls = _spy(runner)
        batched = runner.open_batched_streams("pad")
        ids = [batched.add() for _ in chunks]
        alone = [runner.open_stream() for _ in chunks]
        for _ in range(2):  # twice: the second round starts from the state the first left
            got = batched.step("decoder", dict(zip(ids, chunks, strict=True)))
            for i, stream, chunk in zip(ids, alone, chunks, strict=True):
                _same("torch", got[i], stream.step("decoder", chunk))
        assert sorted(calls) == sorted([("decoder", 2), ("decoder", 1)] * 2)


def test_bad_input_is_one_clear_line_and_changes_no_state(tiny_video_model, clip):
    """An unknown or removed stream id, a chunk of the wrong shape or dtype (naming its stream), a step not
    given a mapping and an unknown `lengths` are each refused in one line; a refused round runs no call and
    leaves every stream's state as it was (the next rounds still equal each stream alone)."""
    frames = _crop(clip, 0)
    with _open(tiny_video_model("causal3d-t2"), "ort-cpu") as runner:
        batched = runner.open_batched_streams()
        a, b = batched.add(), batched.add()
        alone = runner.open_stream()
        _same("ort-cpu", batched.step("encoder", {a: frames[:, :2]})[a], alone.step("encoder", frames[:, :2]))
        batched.remove(b)
        calls = _spy(runner)
        refusals = [
            (VaeDeployError, {b: frames[:, 2:4]}, rf"batched streams: no open stream {b} \(open: {a}\); "
                                                  r"add\(\) opens one"),
            (VaeDeployError, {"x": frames[:, 2:4]}, r"batched streams: no open stream 'x' \(open: 0\)"),
            (InputShapeError, {a: frames[0, 2:4]}, rf"stream {a}: encoder input 'video' must be float32 "
                                                   r"\(batch, frames, 3, height, width\), got shape"),
            (InputShapeError, {a: frames[:, 2:5]}, rf"stream {a}: encoder input 'video' must be .* frames a "
                                                   r"multiple of 2"),
            (InputShapeError, {a: frames[:, 2:4].astype(np.float64)}, rf"stream {a}: .* got dtype float64"),
            (InputShapeError, [frames], r"batched streams: step takes \{stream id: chunk\}, got list"),
        ]
        for error, chunks, message in refusals:
            with pytest.raises(error, match=message) as caught:
                batched.step("encoder", chunks)
            assert "\n" not in str(caught.value)
        assert calls == []
        with pytest.raises(VaeDeployError, match=rf"no open stream {b}"):
            batched.remove(b)
        with pytest.raises(ConfigError, match="lengths must be one of group, pad, got 'stack'"):
            runner.open_batched_streams("stack")
        c = batched.add()
        assert isinstance(batched, BatchedStreams) and batched.ids == [a, c] and c not in (a, b)
        got = batched.step("encoder", {a: frames[:, 2:6], c: frames[:, :2]})
        _same("ort-cpu", got[a], alone.step("encoder", frames[:, 2:6]))
        _same("ort-cpu", got[c], runner.open_stream().step("encoder", frames[:, :2]))


@pytest.mark.slow  # reads the Wan 2.1 export (tests/conftest.py's slow mark)
def test_wan_joining_streams_run_the_first_rule_while_others_run_steady(external_model, clip):  # noqa: F811
    """Wan 2.1 (a first chunk of its own: 1 frame, then 4 per latent frame), on both backends: streams
    joining mid-way run encoder_first/decoder_first batched among themselves in the same round as the others'
    steady calls, and every chunk's outputs equal that stream alone; after the first rule, a joiner's rest of
    chunk shares the steady calls of the streams already running."""
    model_dir = external_model("wan2.1").model_dir
    crops = [_crop(clip, i, (32, 32)) for i in range(4)]
    frames = [{"a": crops[0][:, 0:5], "b": crops[1][:, 0:1]},
              {"a": crops[0][:, 5:9], "b": crops[1][:, 1:5], "c": crops[2][:, 0:5], "d": crops[3][:, 0:5]},
              {"b": crops[1][:, 5:9], "c": crops[2][:, 5:9], "d": crops[3][:, 5:13]}]
    rng = np.random.default_rng(2)
    latents = [{"a": 3, "b": 1}, {"a": 1, "b": 2, "c": 2}, {"b": 1, "c": 1}]
    latents = [{n: rng.standard_normal((1, k, 4, 4, 4)).astype(np.float32) for n, k in r.items()}
               for r in latents]
    for backend in BACKENDS:
        with _open(model_dir, backend) as runner:
            calls = _spy(runner)
            _rounds(runner, backend, "encoder", frames)
            if backend == "ort-cpu":  # one latent frame (4 frames) per call
                assert calls[:3] == [("encoder_first", 2), ("encoder", 1), ("encoder_first", 2)]
                assert calls[3] == ("encoder", 4)  # a, b, and c and d's rest of chunk
            _rounds(runner, backend, "decoder", latents)
            assert ("decoder_first", 2) in calls and ("decoder", 2) in calls


def test_the_readme_example_runs(tmp_path):
    """The README's "Many streams in one call" example, run as a user would, on the packaged model and on
    what looks like the edge install (importing torch fails): three streams, one leaving and one of another
    frame size joining."""
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("### Many streams in one call"):], re.S).group(1)
    (tmp_path / "model").symlink_to(DEFAULT_MODEL_DIR)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=edge_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("{'door': (1, 4, 4, 8, 8), 'yard': (1, 4, 4, 8, 8), "
                                     "'gate': (1, 4, 4, 12, 12)}")
