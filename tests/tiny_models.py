"""The tiny video model zoo: one config per design, shared by conftest.py's `tiny_video_model` fixture and
the model tests (a module of its own: `from conftest import ...` finds whichever conftest.py pytest loaded
first, tests/batch/conftest.py in a whole-suite run)."""

# name -> (kind, config, channels): random-weight video models small enough to export in seconds and to
# stream 32-64 px frames quickly; every design, and a 1-channel model for grayscale handling.
_TINY_FRAME = {"channels": 16, "fine_channels": 8, "latent_channels": 4, "downsample": 8}
TINY_VIDEO_MODELS: dict[str, tuple[str, dict]] = {
    "frame": ("frame", dict(_TINY_FRAME)),
    "frame-gray": ("frame", {**_TINY_FRAME, "in_channels": 1}),
    "temporal": ("temporal", {"frame": dict(_TINY_FRAME), "window": 3, "d_model": 16, "heads": 2,
                              "layers": 1}),
    "causal3d-t1": ("causal3d", {**_TINY_FRAME, "temporal_downsample": 1}),
    "causal3d-t2": ("causal3d", {**_TINY_FRAME, "temporal_downsample": 2}),
    "causal3d-t4": ("causal3d", {**_TINY_FRAME, "temporal_downsample": 4, "kernel_t": 2}),
}
