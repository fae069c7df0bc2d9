"""The video VAEs: contract attributes, shapes, layout checks, configs, training, checkpoints, ONNX export."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from video_zoo import (
    TINY_VIDEO_CONFIGS,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    tiny_model,
)

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.export.onnx_export import GraphModule
from vae_deploy.models import build_model
from vae_deploy.models.causal3d import Causal3DVAE, Causal3DVAEConfig
from vae_deploy.models.checkpoint import load_model, save_model
from vae_deploy.models.frame import FrameVAE, FrameVAEConfig
from vae_deploy.models.losses import mse_reconstruction, vae_loss
from vae_deploy.models.temporal import TemporalVAE, TemporalVAEConfig
from vae_deploy.runtime.spec import SymDim

NAMES = sorted(TINY_VIDEO_CONFIGS)


@pytest.mark.parametrize("cls, config_cls, kind", [(FrameVAE, FrameVAEConfig, "frame"),
                                                   (TemporalVAE, TemporalVAEConfig, "temporal"),
                                                   (Causal3DVAE, Causal3DVAEConfig, "causal3d")])
def test_default_models_carry_the_contract_attributes(cls, config_cls, kind):
    model = build_model(kind, {})
    assert type(model) is cls and model.kind == kind
    assert isinstance(model.config, config_cls) and dataclasses.is_dataclass(model.config)
    assert (model.spatial_factor, model.temporal_factor, model.latent_channels) == (8, 1, 4)
    video = torch.rand(1, 4, 3, 64, 64)
    with torch.no_grad():
        mu, logvar = model.encode(video)
        recon, mu2, _ = model(video)
    assert mu.shape == logvar.shape == (1, 4, 4, 8, 8)
    assert recon.shape == video.shape and recon.min() >= 0 and recon.max() <= 1
    assert torch.equal(mu, mu2)  # forward samples only between encoder and decoder
    # the compression floor: uint8 RGB bytes over fp16 latent bytes >= 24
    assert video.numel() / (mu.numel() * 2) >= 24


@pytest.mark.parametrize("kind, config, video_shape, latent_shape", [
    ("frame", {"downsample": 4, "channels": 8, "fine_channels": 8}, (2, 3, 3, 32, 48), (2, 3, 4, 8, 12)),
    ("frame", {"downsample": 16, "channels": 8, "fine_channels": 8, "latent_channels": 16},
     (1, 2, 3, 32, 64), (1, 2, 16, 2, 4)),
    ("temporal", {"frame": {"downsample": 4, "channels": 8, "fine_channels": 8}, "d_model": 8, "heads": 2},
     (1, 5, 3, 16, 16), (1, 5, 4, 4, 4)),
    ("causal3d", {"downsample": 16, "temporal_downsample": 2, "channels": 8, "fine_channels": 8},
     (1, 4, 3, 32, 32), (1, 2, 4, 2, 2)),
    ("causal3d", {"downsample": 4, "temporal_downsample": 4, "channels": 8, "fine_channels": 8,
                  "latent_channels": 8, "in_channels": 1}, (2, 8, 1, 16, 24), (2, 2, 8, 4, 6)),
])
def test_spatial_and_temporal_factors(kind, config, video_shape, latent_shape):
    model = build_model(kind, config).eval()
    assert model.spatial_factor == video_shape[3] // latent_shape[3]
    assert model.temporal_factor == video_shape[1] // latent_shape[1]
    with torch.no_grad():
        mu, logvar = model.encode(torch.rand(video_shape))
        assert mu.shape == logvar.shape == latent_shape
        assert model.decode(mu).shape == video_shape


@pytest.mark.parametrize("name", NAMES)
def test_layouts_are_checked_with_the_offending_shape(name):
    model = tiny_model(name)
    f = model.temporal_factor
    bad_videos = [torch.rand(2 * f, 3, 32, 32),  # NCHW images, not video
                  torch.rand(1, 2 * f, 1, 32, 32),  # grayscale into an RGB model
                  torch.rand(1, 2 * f, 3, 30, 32)]  # not a multiple of the spatial factor
    if f > 1:
        bad_videos.append(torch.rand(1, f + 1, 3, 32, 32))  # not a whole temporal group
    for video in bad_videos:
        with pytest.raises(InputShapeError, match=re.escape(str(tuple(video.shape)))):
            model.encode(video)
    with pytest.raises(InputShapeError, match=r"got \(1, 2, 3, 4, 4\)"):
        model.decode(torch.rand(1, 2, 3, 4, 4))


@pytest.mark.parametrize("kind, config, key", [
    ("frame", {"downsample": 6}, "downsample"),
    ("frame", {"activation": "tanh"}, "activation"),
    ("frame", {"latent_channel": 4}, "latent_channel"),
    ("temporal", {"window": 1}, "window"),
    ("temporal", {"d_model": 30, "heads": 4}, "heads"),
    ("temporal", {"frame": {"downsample": 3}}, "downsample"),
    ("causal3d", {"temporal_downsample": 3}, "temporal_downsample"),
    ("causal3d", {"kernel_t": 1}, "kernel_t"),
])
def test_bad_configs_are_config_errors(kind, config, key):
    with pytest.raises(ConfigError, match=key):
        build_model(kind, config)


@pytest.mark.parametrize("name", NAMES)
def test_models_train_and_every_parameter_gets_a_gradient(name):
    model = tiny_model(name).train()
    torch.manual_seed(0)
    f = model.temporal_factor
    video = torch.rand(2, 2 * f, 3, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        recon, mu, logvar = model(video)
        loss, _, _ = vae_loss(recon, video, mu, logvar, recon_fn=mse_reconstruction, kl_weight=1e-3)
        opt.zero_grad()
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient reaches {missing}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["temporal", "causal3d-t2"])
def test_checkpoint_round_trip(tmp_path, name):
    model = tiny_model(name)
    save_model(tmp_path / "ckpt", model)
    loaded, config = load_model(tmp_path / "ckpt")
    assert config["kind"] == model.kind and loaded.config == model.config
    video = torch.rand(1, 2 * model.temporal_factor, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(video)[0], model.encode(video)[0])


def _axes(shape, prefix):
    """Dynamic axes of a state tensor: the dims that its symbolic shape makes depend on the input."""
    return {axis: f"{prefix}_{axis}" for axis, d in enumerate(shape) if isinstance(d, SymDim)}


def _export(module, args, path, data_names, data_axes, out_names, state_shapes):
    n = len(state_shapes)
    past = [f"past_{i}" for i in range(n)]
    present = [f"present_{i}" for i in range(n)]
    axes = dict(data_axes)
    for i, shape in enumerate(state_shapes):
        axes[past[i]] = axes[present[i]] = _axes(shape, f"state{i}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is the one asked for
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17,
                          input_names=[*data_names, *past], output_names=[*out_names, *present],
                          dynamic_axes=axes)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), past


def _ort_chunks(session, data_name, past_names, x, state, chunk):
    outputs = []
    for start in range(0, x.shape[1], chunk):
        feeds = {data_name: x[:, start:start + chunk], **dict(zip(past_names, state, strict=True))}
        result = session.run(None, feeds)
        n_out = len(result) - len(state)
        outputs.append(result[:n_out])
        state = result[n_out:]
    return [np.concatenate(parts, axis=1) for parts in zip(*outputs, strict=True)]


@pytest.mark.parametrize("name", ["frame", "temporal", "causal3d-t1", "causal3d-t2"])
def test_onnx_step_graphs_stream_like_torch_full_sequence(tmp_path, name):
    """Export encode_step/decode_step through the exporter's wrapper (GraphModule; dynamic batch, time,
    height, width, state as extra inputs/outputs), then run ORT in chunks at another size than the trace and
    compare with the torch full sequence."""
    model = tiny_model(name)
    f = model.temporal_factor
    sym = SymDim("b"), SymDim("h"), SymDim("w")
    video_axes = {0: "batch", 1: "frames", 3: "height", 4: "width"}
    latent_axes = {0: "batch", 1: "latent_frames", 3: "latent_h", 4: "latent_w"}
    trace_video = torch.rand(1, 2 * f, 3, 32, 32)
    with torch.no_grad():
        trace_z = model.encode(trace_video)[0]
    encoder, decoder = GraphModule(model, "encode_step"), GraphModule(model, "decode_step")
    enc, enc_past = _export(encoder, (trace_video, *model.init_encoder_state(1, 32, 32)),
                            tmp_path / "encoder.onnx", ["video"], {"video": video_axes,
                            "mu": latent_axes, "logvar": latent_axes}, ["mu", "logvar"],
                            model.encoder_state_shapes(*sym))
    dec, dec_past = _export(decoder, (trace_z, *model.init_decoder_state(1, 4, 4)),
                            tmp_path / "decoder.onnx", ["z"], {"z": latent_axes, "frames": video_axes},
                            ["frames"], model.decoder_state_shapes(*sym))

    gen = torch.Generator().manual_seed(5)
    video = torch.rand(2, 9 * f, 3, 48, 40, generator=gen)
    z = torch.randn(2, 9, model.latent_channels, 6, 5, generator=gen)
    with torch.no_grad():
        mu_ref, logvar_ref = model.encode(video)
        frames_ref = model.decode(z)
    for chunk in (2, 3):
        state = [s.numpy() for s in model.init_encoder_state(2, 48, 40)]
        mu, logvar = _ort_chunks(enc, "video", enc_past, video.numpy(), state, chunk * f)
        state = [s.numpy() for s in model.init_decoder_state(2, 6, 5)]
        (frames,) = _ort_chunks(dec, "z", dec_past, z.numpy(), state, chunk)
        assert np.abs(mu - mu_ref.numpy()).max() <= 1e-4
        assert np.abs(logvar - logvar_ref.numpy()).max() <= 1e-4
        assert np.abs(frames - frames_ref.numpy()).max() <= 1e-4


# ------------------------------------------------------------------------------------------ warm start


def _trained_like_frame_vae(**config) -> FrameVAE:
    """A FrameVAE with random, non-zero weights everywhere (a stand-in for a trained one)."""
    torch.manual_seed(1)
    frame = FrameVAE(FrameVAEConfig(channels=16, fine_channels=8, **config)).eval()
    with torch.no_grad():
        for p in frame.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return frame


@pytest.mark.parametrize("target", [
    TemporalVAEConfig(frame=FrameVAEConfig(channels=16, fine_channels=8), window=3, d_model=8, heads=2),
    Causal3DVAEConfig(channels=16, fine_channels=8, kernel_t=3),
])
def test_a_model_started_from_a_frame_vae_computes_what_the_frame_vae_computes(target):
    """train.init_from: the temporal Transformer starts as the identity on z and the causal 3D convs are
    inflated onto the current frame's tap, so before training both designs equal the FrameVAE."""
    frame = _trained_like_frame_vae()
    model = build_model("temporal" if isinstance(target, TemporalVAEConfig) else "causal3d", target).eval()
    model.warm_start_from(frame)
    video = torch.rand(2, 5, 3, 32, 48)
    with torch.no_grad():
        mu, logvar = frame.encode(video)
        mu2, logvar2 = model.encode(video)
        frames, frames2 = frame.decode(mu), model.decode(mu)
    for a, b in ((mu, mu2), (logvar, logvar2), (frames, frames2)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert frames.std() > 0.01  # a real comparison: the decoded frames are not a constant


@pytest.mark.parametrize("target, source_config, message", [
    (Causal3DVAEConfig(channels=16, fine_channels=8), {"latent_channels": 8}, "latent_channels 8"),
    (Causal3DVAEConfig(channels=16, fine_channels=8, temporal_downsample=2), {}, "temporal downsampling"),
    (TemporalVAEConfig(frame=FrameVAEConfig(channels=32, fine_channels=8)), {}, "channels 16"),
])
def test_warm_start_refuses_a_frame_vae_that_does_not_fit(target, source_config, message):
    model = build_model("temporal" if isinstance(target, TemporalVAEConfig) else "causal3d", target)
    with pytest.raises(ConfigError, match=message):
        model.warm_start_from(_trained_like_frame_vae(**source_config))


def test_a_frame_vae_starts_only_from_a_frame_vae():
    model = build_model("temporal", TemporalVAEConfig(frame=FrameVAEConfig(channels=16, fine_channels=8)))
    with pytest.raises(ConfigError, match="a 'frame' model cannot start from a 'temporal' model"):
        _trained_like_frame_vae().warm_start_from(model)


@pytest.mark.parametrize("kind, config", [
    ("frame", FrameVAEConfig(channels=16, fine_channels=8)),
    ("temporal", TemporalVAEConfig(frame=FrameVAEConfig(channels=16, fine_channels=8))),
    ("causal3d", Causal3DVAEConfig(channels=16, fine_channels=8)),
])
def test_fine_tuning_copies_every_weight_of_a_model_of_the_same_kind_and_config(kind, config):
    torch.manual_seed(1)
    source, model = build_model(kind, config), build_model(kind, config)
    model.warm_start_from(source)
    theirs = source.state_dict()
    assert theirs and all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    other = dataclasses.replace(config, latent_channels=8) if kind != "temporal" else \
        dataclasses.replace(config, window=config.window + 1)
    with pytest.raises(ConfigError, match=f"the '{kind}' model to start from has another config"):
        build_model(kind, other).warm_start_from(source)
