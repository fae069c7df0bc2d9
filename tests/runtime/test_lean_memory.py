"""ort-cpu's memory options (issue 24 item 2) on real exported models: a stream whose state stays bound in
ORT buffers gives the same bits as the numpy round trip it replaced, the session options are applied and
checked, and `vae-deploy export` prints each graph's and each parity case's progress with seconds."""

from __future__ import annotations

import re

import numpy as np
import pytest
from external_zoo import external_folder, external_model  # noqa: F401 (pytest fixtures)

from vae_deploy.errors import ConfigError
from vae_deploy.runtime import load_runner
from vae_deploy.runtime.ort_bound_state import BoundStateStream
from vae_deploy.runtime.runner import Stream

MEMORY_OPTIONS = {"arena": False, "mem_pattern": False, "prepacking": False, "shrink_arena": True}


def _stream_both_ways(model_dir, graph: str, chunks: list[np.ndarray], **options):
    """Each chunk's outputs and the final state through a bound stream and through the numpy round trip."""
    results = {}
    for bind in (True, False):
        with load_runner(model_dir, "ort-cpu", threads=1, bind_state=bind, **options) as runner:
            stream = runner.open_stream()
            assert isinstance(stream, BoundStateStream) == bind and isinstance(stream, Stream)
            outputs = [stream.step(graph, chunk) for chunk in chunks]
            state = stream.state(graph) if bind else stream._state[graph]
            results[bind] = outputs, state
    return results[True], results[False]


def _assert_identical(bound, plain) -> None:
    (bound_out, bound_state), (plain_out, plain_state) = bound, plain
    for got, want in zip(bound_out, plain_out, strict=True):
        assert got.keys() == want.keys()
        for name in got:
            np.testing.assert_array_equal(got[name], want[name])
    assert bound_state.keys() == plain_state.keys()
    for name in bound_state:
        np.testing.assert_array_equal(bound_state[name], plain_state[name])


def test_bound_state_is_bit_identical_over_chunks(tiny_video_model):
    """The causal 3D model's encoder and decoder over 5 chunks of uneven length: the same kernels run on the
    same inputs, only where the state lives differs, so the outputs are bit-identical."""
    model_dir = tiny_video_model("causal3d-t2")
    rng = np.random.default_rng(0)
    video = rng.uniform(size=(1, 14, 3, 32, 48)).astype(np.float32)
    frames = [video[:, a:b] for a, b in ((0, 4), (4, 6), (6, 10), (10, 12), (12, 14))]
    _assert_identical(*_stream_both_ways(model_dir, "encoder", frames))
    z = rng.standard_normal((1, 7, 4, 4, 6)).astype(np.float32)
    latents = [z[:, a:b] for a, b in ((0, 2), (2, 3), (3, 5), (5, 6), (6, 7))]
    _assert_identical(*_stream_both_ways(model_dir, "decoder", latents, **MEMORY_OPTIONS))


def test_bound_state_after_a_first_rule_is_bit_identical(external_model):  # noqa: F811 (fixture)
    """Wan's first chunk runs decoder_first (its state comes back as numpy and is bound from then on), then
    three steady chunks: bit-identical to the numpy round trip."""
    model_dir = external_model("wan2.1").model_dir
    z = np.random.default_rng(1).standard_normal((1, 6, 4, 4, 4)).astype(np.float32)
    chunks = [z[:, :3], z[:, 3:4], z[:, 4:6]]
    _assert_identical(*_stream_both_ways(model_dir, "decoder", chunks))


def test_memory_options_are_applied_and_checked(tiny_video_model):
    model_dir = tiny_video_model("frame")
    with load_runner(model_dir, "ort-cpu", **MEMORY_OPTIONS) as runner:
        applied = runner._sessions["encoder"].get_session_options()
        assert not applied.enable_cpu_mem_arena and not applied.enable_mem_pattern
        assert applied.get_session_config_entry("session.disable_prepacking") == "1"
    with load_runner(model_dir, "ort-cpu") as runner:
        applied = runner._sessions["encoder"].get_session_options()
        assert applied.enable_cpu_mem_arena and applied.enable_mem_pattern
    with pytest.raises(ConfigError) as caught:
        load_runner(model_dir, "ort-cpu", arenna=False)
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(r"ort-cpu: unknown option 'arenna' \(valid options: .*\barena\b.*\bbind_state\)",
                        message), message
    with pytest.raises(ConfigError, match="option 'bind_state' must be bool, got str 'yes'"):
        load_runner(model_dir, "ort-cpu", bind_state="yes")


def test_export_prints_each_graph_and_parity_case_with_seconds(external_model):  # noqa: F811 (fixture)
    """The fixture's `vae-deploy export` run (a real process): a line before each graph, one with its
    seconds after it, and one per parity case."""
    lines = [line.strip() for line in external_model("wan2.1").export.stdout.splitlines()]
    for graph in ("encoder", "decoder", "encoder_first", "decoder_first"):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"exporting {graph} "))
        assert re.fullmatch(r"done in \d+\.\d s", lines[at + 1]), lines[at:at + 2]
    cases = [line for line in lines if line.startswith("parity ")]
    assert cases and all(re.fullmatch(r"parity \w+ \w+ \(batch \d+\): torch \d+\.\d s, ort-cpu \d+\.\d s",
                                      line) for line in cases), cases
    assert re.fullmatch(r"done in \d+\.\d s", lines[lines.index("checking parity: ort-cpu vs torch") +
                                                     len(cases) + 1])
