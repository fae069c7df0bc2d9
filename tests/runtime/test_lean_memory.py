"""ort-cpu's memory options (issue 24 item 2) on real exported models: a stream whose state stays bound in
ORT buffers gives the same bits as the numpy round trip it replaced, the session options are applied and
checked, and `vae-deploy export` prints each graph's and each parity case's progress with seconds."""

from __future__ import annotations

import re

import numpy as np
import pytest
from external_zoo import (  # noqa: F401 (pytest fixtures)
    WAN_GRAPHS,
    WAN_PART_GRAPHS,
    WAN_WHOLE_GRAPHS,
    external_folder,
    external_model,
)

from vae_deploy.errors import ConfigError
from vae_deploy.runtime import load_runner
from vae_deploy.runtime.ort_bound_state import BoundStateStream

# ORT's own settings and the whole chunk per call: the old defaults (runtime/cpu_memory.py has the new)
OLD_MEMORY = {"arena": True, "mem_pattern": True, "shrink_arena": True, "call_steps": 0, "mmap_threshold": 0}


def _stream(model_dir, graph: str, chunks: list[np.ndarray], **options):
    """Each chunk's outputs and the state held after the last one, streamed with these runner options."""
    with load_runner(model_dir, "ort-cpu", threads=1, **options) as runner:
        stream = runner.open_stream()
        assert isinstance(stream, BoundStateStream) == runner.options["bind_state"]
        outputs = [stream.step(graph, chunk) for chunk in chunks]
        return outputs, stream.state(graph) if isinstance(stream, BoundStateStream) else stream._state[graph]


def _assert_same(got, want, atol: float = 0.0) -> None:
    """Outputs of every chunk and the final state: equal bits (atol 0) or within atol."""
    (got_out, got_state), (want_out, want_state) = got, want
    pairs = [(g[name], w[name]) for g, w in zip(got_out, want_out, strict=True) for name in w]
    pairs += [(got_state[name], want_state[name]) for name in want_state]
    assert [sorted(g) for g in got_out] == [sorted(w) for w in want_out]
    assert got_state.keys() == want_state.keys()
    for g, w in pairs:
        if atol:
            np.testing.assert_allclose(g, w, rtol=0, atol=atol)
        else:
            np.testing.assert_array_equal(g, w)


def _uneven_chunks(rng):
    """Frames and latents of the tiny causal 3D model (temporal factor 2), cut into 5 chunks of uneven
    length."""
    video = rng.uniform(size=(1, 14, 3, 32, 48)).astype(np.float32)
    z = rng.standard_normal((1, 7, 4, 4, 6)).astype(np.float32)
    return ([video[:, a:b] for a, b in ((0, 4), (4, 6), (6, 10), (10, 12), (12, 14))],
            [z[:, a:b] for a, b in ((0, 2), (2, 3), (3, 5), (5, 6), (6, 7))])


def test_bound_state_is_bit_identical_over_chunks(tiny_video_model):
    """State bound in place against state returned as numpy and fed back, everything else equal (whole
    chunks, and one step per call): the same kernels on the same numbers, so equal bits, state included."""
    model_dir = tiny_video_model("causal3d-t2")
    frames, latents = _uneven_chunks(np.random.default_rng(0))
    for graph, chunks in (("encoder", frames), ("decoder", latents)):
        for steps in (0, 1):
            _assert_same(_stream(model_dir, graph, chunks, call_steps=steps),
                         _stream(model_dir, graph, chunks, call_steps=steps, bind_state=False))


def test_new_memory_defaults_match_the_old_path(tiny_video_model):
    """The new defaults (bound state, one step per call, no arena, no memory patterns) against the old path
    (numpy state, the whole chunk per call, ORT's arena and patterns): within 1e-6, not bit for bit,
    because a call of one step hands MLAS matrices of another size, which it blocks and sums in another
    order (measured here: a few 1e-8 on outputs near 0.05); the graphs' parity tolerance is 1e-4."""
    model_dir = tiny_video_model("causal3d-t2")
    frames, latents = _uneven_chunks(np.random.default_rng(1))
    for graph, chunks in (("encoder", frames), ("decoder", latents)):
        _assert_same(_stream(model_dir, graph, chunks),
                     _stream(model_dir, graph, chunks, bind_state=False, **OLD_MEMORY), atol=1e-6)


@pytest.mark.slow  # reads the Wan 2.1 export (tests/conftest.py's slow mark)
def test_bound_state_after_a_first_rule_is_bit_identical(external_model):  # noqa: F811 (fixture)
    """Wan's first chunk runs decoder_first (its state comes back as numpy and is bound from then on), then
    three steady chunks: bit-identical to the numpy round trip with the same calls."""
    model_dir = external_model("wan2.1").model_dir
    z = np.random.default_rng(1).standard_normal((1, 6, 4, 4, 4)).astype(np.float32)
    chunks = [z[:, :3], z[:, 3:4], z[:, 4:6]]
    _assert_same(_stream(model_dir, "decoder", chunks),
                 _stream(model_dir, "decoder", chunks, bind_state=False))


def test_memory_options_are_applied_and_checked(tiny_video_model):
    """ort-cpu's measured defaults reach the sessions, options override them, and a misspelled or ill-typed
    option is refused in one line naming the valid ones."""
    model_dir = tiny_video_model("causal3d-t2")
    with load_runner(model_dir, "ort-cpu") as runner:
        applied = runner._sessions["encoder"].get_session_options()
        assert not applied.enable_cpu_mem_arena and not applied.enable_mem_pattern
    with load_runner(model_dir, "ort-cpu", prepacking=False, **OLD_MEMORY) as runner:
        applied = runner._sessions["encoder"].get_session_options()
        assert applied.enable_cpu_mem_arena and applied.enable_mem_pattern
        assert applied.get_session_config_entry("session.disable_prepacking") == "1"
    with pytest.raises(ConfigError) as caught:
        load_runner(model_dir, "ort-cpu", arenna=False)
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(r"ort-cpu: unknown option 'arenna' \(valid options: .*\barena\b.*\bbind_state\b.*\)",
                        message), message
    with pytest.raises(ConfigError, match="option 'bind_state' must be bool, got str 'yes'"):
        load_runner(model_dir, "ort-cpu", bind_state="yes")
    with pytest.raises(ConfigError, match="option 'call_steps' must be 0 or more, got -1"):
        load_runner(model_dir, "ort-cpu", call_steps=-1)


@pytest.mark.slow  # reads the Wan 2.1 export (tests/conftest.py's slow mark)
def test_export_prints_each_graph_and_parity_case_with_seconds(external_model):  # noqa: F811 (fixture)
    """The fixture's `vae-deploy export` run (a real process): a line before each graph, one with its
    seconds after it, and one per parity case with the reference's and the backend's seconds. (The console
    wraps long lines: the output is read with its whitespace collapsed.)"""
    text = " ".join(external_model("wan2.1").export.stdout.split())
    no_other_step = r"(?:(?!exporting|joining|storing|checking).)*?"
    for graph in WAN_PART_GRAPHS:
        assert re.search(rf"exporting {graph} \({no_other_step} done in \d+\.\d s", text), graph
    for graph in WAN_WHOLE_GRAPHS:  # joined from its parts, not traced again
        assert re.search(rf"joining {graph} from {no_other_step} done in \d+\.\d s", text), graph
    checking = text[text.index("checking parity: ort-cpu vs torch"):]
    cases = re.findall(r"parity (\w+) (real|random|stream) \(batch \d+\): torch \d+\.\d s, ort-cpu \d+\.\d s",
                       checking)
    assert {graph for graph, _ in cases} == WAN_GRAPHS, cases
    assert re.search(r"ort-cpu \d+\.\d s done in \d+\.\d s", checking)  # the check's own total, last
