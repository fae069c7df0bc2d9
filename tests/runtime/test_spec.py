"""Graph specs: symbolic dimensions, input validation messages, state shapes, TensorRT profile shapes."""

import numpy as np
import pytest

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.runtime.spec import GraphSpec, StateSpec, SymDim, TensorSpec, dim_symbols, eval_dim


def _video_spec() -> GraphSpec:
    return GraphSpec(
        "encoder",
        inputs=[TensorSpec("video", ("batch", "frames", 3, "height", "width"), layout="NTCHW",
                           value_range=(0.0, 1.0))],
        outputs=[TensorSpec("mu", ("batch", "frames", 4, "height//8", "width//8"))],
        state=[StateSpec("past_0", "present_0", ("batch", 2, 16, "(height-1)//2+1", "(width-1)//2+1"))],
        example_dims={"batch": 1, "frames": 4, "height": 32, "width": 32},
        dim_multiples={"height": 8, "width": 8},
        stream_axis="frames", stream_chunks=(1, 3),
    )


def test_symdim_records_the_formula_that_integer_arithmetic_computes():
    h = SymDim("height")
    formulas = {
        "conv": ((h + 2 * 1 - 3) // 2 + 1, lambda v: (v + 2 - 3) // 2 + 1),
        "upsample": (h * 4, lambda v: v * 4),
        "ceil": (-(-h // 4), lambda v: -(-v // 4)),
        "reflected": (100 - h, lambda v: 100 - v),
        "identities": ((h * 1) // 1 + 0, lambda v: v),
    }
    for name, (sym, fn) in formulas.items():
        for value in (1, 7, 32, 33, 1080):
            assert eval_dim(sym.expr, {"height": value}) == fn(value), name
    assert ((h * 1) // 1 + 0).expr == "height"  # identities do not clutter the manifest
    assert dim_symbols(((h + 1) // 2 * SymDim("width")).expr) == {"height", "width"}


@pytest.mark.parametrize("bad", ["__import__('os')", "height ** 2", "height / 2", "h.real", "1.5", "[1]"])
def test_dimension_expressions_are_integer_arithmetic_only(bad):
    with pytest.raises(ConfigError):
        TensorSpec("x", ("batch", bad))


def test_state_must_be_a_function_of_the_inputs():
    with pytest.raises(ConfigError, match="depth"):
        GraphSpec("encoder", inputs=[TensorSpec("x", ("batch", 4))], outputs=[TensorSpec("y", ("batch", 4))],
                  state=[StateSpec("past_0", "present_0", ("batch", "depth"))])


def test_bind_returns_symbols_and_resolves_state_shapes():
    spec = _video_spec()
    video = np.zeros((2, 5, 3, 48, 64), np.float32)
    env = spec.bind({"video": video})
    assert env == {"batch": 2, "frames": 5, "height": 48, "width": 64}
    assert spec.state_shapes(env) == [(2, 2, 16, 24, 32)]
    assert spec.zero_state(env)["past_0"].shape == (2, 2, 16, 24, 32)
    assert not spec.zero_state(env)["past_0"].any()


@pytest.mark.parametrize(("array", "pattern"), [
    (np.zeros((2, 5, 3, 48, 64), np.float64),
     r"must be float32 \(batch, frames, 3, height, width\).*float64"),
    (np.zeros((2, 3, 48, 64), np.float32), r"\(batch, frames, 3, height, width\).*4 dims instead of 5"),
    (np.zeros((2, 5, 1, 48, 64), np.float32), r"\(batch, frames, 3, height, width\).*axis 2 is 1, not 3"),
    (np.zeros((2, 5, 3, 50, 64), np.float32), r"height a multiple of 8"),
    (np.zeros((0, 5, 3, 48, 64), np.float32), r"empty axis 0"),
    ([[1.0]], r"not a numpy array"),
])
def test_wrong_inputs_name_the_expected_shape(array, pattern):
    with pytest.raises(InputShapeError, match=pattern):
        _video_spec().bind({"video": array})


def test_nan_and_inf_are_reported_with_count_and_position():
    video = np.zeros((1, 2, 3, 8, 8), np.float32)
    video[0, 1, 2, 3, 4] = np.nan
    video[0, 1, 2, 5, 5] = np.nan
    video[0, 0, 0, 0, 1] = np.inf
    with pytest.raises(InputShapeError,
                       match=r"2 NaN and 1 infinite value\(s\) \(first at index \(0, 0, 0, 0, 1\)\)"):
        _video_spec().bind({"video": video})


def test_inconsistent_symbols_across_inputs_are_refused():
    spec = GraphSpec("g", inputs=[TensorSpec("a", ("batch", 3)), TensorSpec("b", ("batch", "batch*2"))],
                     outputs=[TensorSpec("y", ("batch", 3))])
    spec.bind({"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 4), np.float32)})
    with pytest.raises(InputShapeError, match="batch is 5 here but 2 in 'a'"):
        spec.bind({"a": np.zeros((2, 3), np.float32), "b": np.zeros((5, 4), np.float32)})
    with pytest.raises(InputShapeError, match=r"axis 1 must be batch\*2 = 4"):
        spec.bind({"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 5), np.float32)})
    with pytest.raises(InputShapeError, match="missing input b"):
        spec.bind({"a": np.zeros((2, 3), np.float32)})


def test_profile_shapes_for_tensorrt_cover_state_and_derived_symbols():
    spec = _video_spec()
    shapes = spec.profile_shapes({"batch": (1, 2, 4), "frames": (1, 8, 16), "height": (32, 128, 256),
                                  "width": (32, 128, 512)})
    assert shapes["video"] == ((1, 1, 3, 32, 32), (2, 8, 3, 128, 128), (4, 16, 3, 256, 512))
    assert shapes["past_0"] == ((1, 2, 16, 16, 16), (2, 2, 16, 64, 64), (4, 2, 16, 128, 256))
    decoder = GraphSpec("decoder",
                        inputs=[TensorSpec("z", ("batch", "latent_frames", 4, "latent_h", "latent_w"))],
                        outputs=[TensorSpec("v", ("batch", "latent_frames*2", 3, "latent_h*8",
                                                  "latent_w*8"))],
                        derived_dims={"latent_frames": "(frames+1)//2", "latent_h": "height//8",
                                      "latent_w": "width//8"})
    shapes = decoder.profile_shapes({"batch": (1, 1, 1), "frames": (1, 8, 15), "height": (32, 64, 128),
                                     "width": (64, 64, 64)})
    assert shapes["z"] == ((1, 1, 4, 4, 8), (1, 4, 4, 8, 8), (1, 8, 4, 16, 8))


def test_dynamic_axes_come_from_the_symbolic_dims():
    assert _video_spec().inputs[0].dynamic_axes == {0: "batch", 1: "frames", 3: "height", 4: "width"}
    assert _video_spec().all_inputs[1].dynamic_axes == {0: "batch", 3: "(height-1)//2+1", 4: "(width-1)//2+1"}
