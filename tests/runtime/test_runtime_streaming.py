"""The generic streaming session: a causal test model exported through the normal export path; feeding
chunks through ONNX Runtime with state carried present -> past reproduces the full-sequence PyTorch output."""

import re

import numpy as np
import onnx
import pytest
import torch
from causal_model import KIND, TinyCausalConfig, TinyCausalVAE
from cpu_device_runners import OrtBoundCpuRunner

from vae_deploy.errors import InputShapeError
from vae_deploy.export import ExportProfile, export_model
from vae_deploy.export.specs import SPEC_BUILDERS, register_spec, streaming_video_specs
from vae_deploy.models.checkpoint import save_model
from vae_deploy.models.registry import MODEL_KINDS, register
from vae_deploy.runtime import load_runner, read_manifest
from vae_deploy.runtime.device_runner import DeviceStream


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    """(torch model, exported model folder) of the test kind, registered only for this module."""
    register(KIND, TinyCausalConfig, TinyCausalVAE)
    register_spec(KIND, streaming_video_specs)
    try:
        torch.manual_seed(0)
        model = TinyCausalVAE().eval()
        ckpt = tmp_path_factory.mktemp("causal_ckpt")
        save_model(ckpt, model)
        out = tmp_path_factory.mktemp("causal_model") / "model"
        export_model(ckpt, out, ExportProfile(parity_batch_sizes=(1, 3)))
        yield model, out
    finally:
        MODEL_KINDS.pop(KIND, None)
        SPEC_BUILDERS.pop(KIND, None)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_chunked_ort_equals_full_torch(causal, chunk):
    model, model_dir = causal
    rng = np.random.default_rng(chunk)
    video = rng.uniform(size=(2, 11, 1, 16, 12)).astype(np.float32)
    z = rng.standard_normal((2, 11, 2, 8, 6)).astype(np.float32)
    with torch.inference_mode():
        full_mu, full_logvar = (t.numpy() for t in model.encode(torch.from_numpy(video)))
        full_video = model.decode(torch.from_numpy(z)).numpy()
    with load_runner(model_dir, "ort-cpu") as runner:
        stream = runner.open_stream()
        parts = [stream.encode(video[:, i:i + chunk]) for i in range(0, 11, chunk)]
        frames = [stream.decode(z[:, i:i + chunk]) for i in range(0, 11, chunk)]
    mu = np.concatenate([p[0] for p in parts], axis=1)
    logvar = np.concatenate([p[1] for p in parts], axis=1)
    assert mu.shape == full_mu.shape == (2, 11, 2, 8, 6)
    assert np.abs(mu - full_mu).max() <= 1e-5
    assert np.abs(logvar - full_logvar).max() <= 1e-5
    decoded = np.concatenate(frames, axis=1)
    assert decoded.shape == full_video.shape == (2, 11, 1, 16, 12)
    assert np.abs(decoded - full_video).max() <= 1e-5
    # The state matters: without it (every chunk from zeros) the result differs.
    if chunk < 11:
        with load_runner(model_dir, "ort-cpu") as runner:
            restarted = np.concatenate([runner.encode(video[:, i:i + chunk])[0]
                                        for i in range(0, 11, chunk)], axis=1)
        assert np.abs(restarted - full_mu).max() > 1e-3


def test_state_specs_reach_the_manifest_and_the_graph(causal):
    _, model_dir = causal
    manifest = read_manifest(model_dir)
    enc, dec = manifest.graph("encoder"), manifest.graph("decoder")
    assert [(s.input, s.output, s.shape, s.initial) for s in enc.state] == [
        ("past_0", "present_0", ("batch", 2, 4, "(height-1)//2+1", "(width-1)//2+1"), "zeros")]
    assert [s.input for s in dec.state] == ["past_0", "past_1"]
    graph = onnx.load(str(model_dir / "decoder.onnx")).graph
    assert [i.name for i in graph.input] == ["z", "past_0", "past_1"]
    assert [o.name for o in graph.output] == ["video", "present_0", "present_1"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "latent_frames", 2, "latent_h", "latent_w"]
    stream_rows = [c for c in manifest.parity["comparisons"] if c["case"] == "stream"]
    assert {(c["graph"], c["chunk"]) for c in stream_rows} == {("encoder", 1), ("encoder", 3), ("decoder", 1),
                                                               ("decoder", 3)}
    assert all(c["passed"] and c["max_abs"] <= 1e-5 for c in stream_rows)


def open_runner(model_dir, kind: str):
    """ort-cpu (state held as numpy by Stream) or ort-cuda's IO-binding runner on the CPU (state held in
    device buffers by DeviceStream): both streams check the held state the same way."""
    return load_runner(model_dir, "ort-cpu") if kind == "numpy-state" else OrtBoundCpuRunner(model_dir)


@pytest.mark.parametrize("kind", ["numpy-state", "device-state"])
def test_stream_refuses_a_changed_frame_size_until_reset(causal, kind):
    _, model_dir = causal
    with open_runner(model_dir, kind) as runner:
        stream = runner.open_stream()
        assert isinstance(stream, DeviceStream) is (kind == "device-state")
        stream.encode(np.zeros((1, 2, 1, 16, 16), np.float32))
        with pytest.raises(InputShapeError, match=re.escape(
                "encoder stream: this chunk needs state past_0 of shape (1, 2, 4, 4, 4) but the stream holds "
                "(1, 2, 4, 8, 8) (batch or frame size changed mid-stream; open a new stream)")):
            stream.encode(np.zeros((1, 2, 1, 8, 8), np.float32))
        stream.reset()
        mu, _ = stream.encode(np.zeros((1, 3, 1, 8, 8), np.float32))
        assert mu.shape == (1, 3, 2, 4, 4)
        with pytest.raises(InputShapeError, match=r"state 'past_1' must be float32 \(1, 1, 4, 4, 4\)"):
            runner.run("decoder", [np.zeros((1, 1, 2, 4, 4), np.float32)],
                       past={"past_0": np.zeros((1, 2, 2, 4, 4), np.float32)})
