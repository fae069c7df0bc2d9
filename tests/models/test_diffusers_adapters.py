"""The frame-VAE diffusers families (AutoencoderKL, AutoencoderTiny) through vae-deploy's own loader: real
diffusers models from tiny random configs, saved with save_pretrained and loaded back with
load_diffusers_folder, checked against diffusers' public encode/decode, chunked against whole clips, and
exported to ONNX and run in onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import diffusers
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from vae_deploy.errors import ConfigError
from vae_deploy.models.adapters import (
    AdaptedVAE,
    AdapterConfig,
    build_inner,
    diffusers_folder,
    load_diffusers_folder,
)
from vae_deploy.models.adapters.contract import check_contract
from vae_deploy.models.adapters.diffusers_kl import wrap as wrap_kl
from vae_deploy.models.adapters.diffusers_tiny import wrap as wrap_tiny
from vae_deploy.models.registry import build_model

TOL = 1e-5  # our graph-ready computation against diffusers' public API, and chunked against whole, in fp32
ONNX_TOL = 1e-4

KL_BLOCKS = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 8,
             "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2}
CONFIGS = {
    # SD 1.x/SDXL style: 4 latent channels, quant convs, a scaling factor and no shift
    "kl-sd": (diffusers.AutoencoderKL, {**KL_BLOCKS, "latent_channels": 4}),
    # SD3/Flux style: 16 latent channels, no quant convs, scaling and shift factors
    "kl-sd3": (diffusers.AutoencoderKL, {**KL_BLOCKS, "latent_channels": 16, "scaling_factor": 1.5305,
                                         "shift_factor": 0.0609, "use_quant_conv": False,
                                         "use_post_quant_conv": False}),
    # TAESD's four stages (8x) at tiny widths
    "tiny": (diffusers.AutoencoderTiny, {"encoder_block_out_channels": (8, 8, 8, 8),
                                         "decoder_block_out_channels": (8, 8, 8, 8),
                                         "num_encoder_blocks": (1, 1, 1, 1),
                                         "num_decoder_blocks": (1, 1, 1, 1),
                                         "latent_channels": 4}),
}
NAMES = sorted(CONFIGS)


def _build(name: str, seed: int = 0, **overrides) -> nn.Module:
    cls, config = CONFIGS[name]
    torch.manual_seed(seed)
    return cls(**{**config, **overrides}).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Each config saved as a diffusers model folder (save_pretrained), random weights from a fixed seed."""
    root = tmp_path_factory.mktemp("diffusers")
    out = {}
    for name in NAMES:
        _build(name).save_pretrained(str(root / name))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def loaded(folders) -> dict[str, tuple[AdaptedVAE, nn.Module]]:
    """name -> (vae-deploy's AdaptedVAE from load_diffusers_folder, diffusers' own model from the folder)."""
    out = {}
    for name, folder in folders.items():
        cls = CONFIGS[name][0]
        out[name] = (load_diffusers_folder(folder).eval(), cls.from_pretrained(str(folder)).eval())
    return out


def _inputs(model: AdaptedVAE, frames: int = 3, size: tuple[int, int] = (32, 32), batch: int = 1,
            seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    s = model.spatial_factor
    video = torch.rand(batch, frames, 3, *size, generator=gen)
    z = torch.randn(batch, frames, model.latent_channels, size[0] // s, size[1] // s, generator=gen)
    return video, z


def _max_abs(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = (torch.as_tensor(np.asarray(t)) if isinstance(t, np.ndarray) else t for t in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_a_pipeline_folder_is_found_through_its_vae_subfolder_and_loads_the_same_model(folders, tmp_path):
    parent = tmp_path / "pipeline"
    _build("kl-sd").save_pretrained(str(parent / "vae"))
    assert diffusers_folder(parent) == parent / "vae"
    assert diffusers_folder(folders["kl-sd"]) == folders["kl-sd"]
    direct = load_diffusers_folder(folders["kl-sd"])
    through_parent = load_diffusers_folder(diffusers_folder(parent))
    assert through_parent.kind == direct.kind == "diffusers-autoencoder-kl"
    assert through_parent.config == direct.config
    theirs = through_parent.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in direct.state_dict().items())


@pytest.mark.parametrize("name", NAMES)
def test_loaded_model_keeps_the_contract_with_the_configs_sizes(loaded, name):
    model, theirs = loaded[name]
    assert model.kind == {"kl-sd": "diffusers-autoencoder-kl", "kl-sd3": "diffusers-autoencoder-kl",
                          "tiny": "diffusers-autoencoder-tiny"}[name]
    assert (model.in_channels, model.latent_channels) == (3, theirs.config.latent_channels)
    assert model.spatial_factor == (8 if name == "tiny" else 2)  # tiny: TAESD's 4 stages; KL: 2 blocks
    assert not model.traits.causal and model.temporal_factor == 1
    assert model.has_logvar == (name != "tiny")
    video, _ = _inputs(model)
    with torch.no_grad():
        mean = model.encode(video)[0]
    assert mean.shape == (1, 3, model.latent_channels, 32 // model.spatial_factor, 32 // model.spatial_factor)


@pytest.mark.parametrize("name", NAMES)
def test_encode_and_decode_equal_diffusers_public_api(loaded, name):
    model, theirs = loaded[name]
    video, z = _inputs(model)  # 1 x 3 frames x 3 x 32 x 32
    frames, latent_frames = video[0], z[0]  # the clip's frames as diffusers' batch
    with torch.no_grad():
        ours = model.encode(video)
        decoded = model.decode(z)
        refs = model.reference_encode(video), model.reference_decode(z)
        if name == "tiny":
            want = (theirs.encode(frames * 2 - 1).latents,)
        else:
            dist = theirs.encode(frames * 2 - 1).latent_dist
            want = (dist.mean, dist.logvar)
        want_frames = (theirs.decode(latent_frames).sample + 1) / 2
    assert len(ours) == len(want) == len(refs[0])
    err = {"decode": _max_abs(decoded[0], want_frames),
           "reference_decode": _max_abs(refs[1][0][0], want_frames)}
    for i, label in enumerate(("mean", "logvar")[:len(want)]):
        err[label] = _max_abs(ours[i][0], want[i])
        err[f"reference_{label}"] = _max_abs(refs[0][i][0], want[i])
    assert max(err.values()) <= TOL, f"{name}: {err}"
    # diffusers' frames leave [0, 1] here, so agreeing with them shows the decoder does not clamp either
    assert want_frames.min() < 0 or want_frames.max() > 1


def test_kl_logvar_is_clamped_to_diffusers_range(folders):
    """DiagonalGaussianDistribution clamps logvar to [-30, 20]; a quant_conv pushed far out shows ours does
    too."""
    model = load_diffusers_folder(folders["kl-sd"]).eval()
    theirs = diffusers.AutoencoderKL.from_pretrained(str(folders["kl-sd"])).eval()
    with torch.no_grad():
        for m in (model.inner.vae, theirs):
            m.quant_conv.bias[4:6] += 1000.0  # two logvar channels far above 20
            m.quant_conv.bias[6:8] -= 1000.0  # two far below -30
        video, _ = _inputs(model)
        _, logvar = model.encode(video)
        want = theirs.encode(video[0] * 2 - 1).latent_dist.logvar
    assert logvar[0, :, :2].eq(20.0).all() and logvar[0, :, 2:].eq(-30.0).all()
    assert _max_abs(logvar[0], want) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_chunked_steps_equal_the_whole_clip(loaded, name):
    model, _ = loaded[name]
    video, z = _inputs(model, frames=4, batch=2)
    with torch.no_grad():
        whole = model.encode(video)
        whole_frames = model.decode(z)
        for chunk in (1, 2):
            parts = [model.encode_step(video[:, t:t + chunk]) for t in range(0, 4, chunk)]
            frames = torch.cat([model.decode_step(z[:, t:t + chunk])[0] for t in range(0, 4, chunk)], dim=1)
            err = {"frames": _max_abs(frames, whole_frames)}
            for i, out in enumerate(whole):
                err[f"encoder output {i}"] = _max_abs(torch.cat([p[i] for p in parts], dim=1), out)
            assert max(err.values()) <= TOL, f"{name}, chunks of {chunk}: {err}"


class _Method(nn.Module):
    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args):
        return tuple(getattr(self.model, self.method)(*args))


def _export(model: AdaptedVAE, method: str, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    axes = {0: "batch", 1: "frames", 3: "height", 4: "width"}
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes: chosen on purpose
        warnings.simplefilter("ignore")
        torch.onnx.export(_Method(model, method).eval(), (example,), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=outputs,
                          dynamic_axes={n: axes for n in ["x", *outputs]})


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_of_the_steps_matches_torch_at_two_frame_sizes(loaded, name, tmp_path):
    model, _ = loaded[name]
    outputs = ["mean", "logvar"] if model.has_logvar else ["mean"]
    video, z = _inputs(model, frames=2, batch=2)
    _export(model, "encode_step", video, tmp_path / "encoder.onnx", outputs)
    _export(model, "decode_step", z, tmp_path / "decoder.onnx", ["video"])
    encoder, decoder = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
                        for f in ("encoder.onnx", "decoder.onnx"))
    for batch, frames, size in ((1, 3, (32, 32)), (2, 1, (48, 64))):  # other sizes than the traced ones
        video, z = _inputs(model, frames=frames, size=size, batch=batch, seed=7)
        with torch.no_grad():
            want_enc, want_dec = model.encode_step(video), model.decode_step(z)
        got_enc = encoder.run(None, {"x": video.numpy()})
        (got_dec,) = decoder.run(None, {"x": z.numpy()})
        err = {o: _max_abs(g, w) for o, g, w in zip(outputs, got_enc, want_enc, strict=True)}
        err["video"] = _max_abs(got_dec, want_dec[0])
        assert max(err.values()) <= ONNX_TOL, f"{name} at {batch}x{frames}x{size}: {err}"


def test_latent_normalization_of_sd_sd3_sdxl_and_tiny_configs(loaded):
    assert loaded["kl-sd"][0].latent_normalization == {"scale": 0.18215, "shift": 0.0}
    assert loaded["kl-sd3"][0].latent_normalization == {"scale": 1.5305, "shift": 0.0609}
    assert loaded["tiny"][0].latent_normalization == {"scale": 1.0, "shift": 0.0}
    assert wrap_tiny(_build("tiny", scaling_factor=0.5, shift_factor=0.25)).latent_normalization == \
        {"scale": 0.5, "shift": 0.25}
    # per-channel statistics (as some SDXL-derived VAEs ship): the SDXL pipelines' (z - mean) * sf / std
    stats = wrap_kl(_build("kl-sd", scaling_factor=0.5, latents_mean=(0.1, 0.2, 0.3, 0.4),
                           latents_std=(1.0, 2.0, 4.0, 5.0)))
    assert stats.latent_normalization == {"scale": [0.5, 0.25, 0.125, 0.1], "shift": [0.1, 0.2, 0.3, 0.4]}


def test_build_inner_from_the_config_rebuilds_the_loaded_model(loaded):
    for name in NAMES:
        model, _ = loaded[name]
        config = AdapterConfig(class_name=model.config.class_name, config=model.config.config)
        rebuilt = build_model(model.kind, config).eval()  # the kind's record: what a checkpoint does
        rebuilt.load_state_dict(model.state_dict())
        video, z = _inputs(model)
        with torch.no_grad():
            assert torch.equal(rebuilt.encode(video)[0], model.encode(video)[0]), name
            assert torch.equal(rebuilt.decode(z), model.decode(z)), name
        assert isinstance(build_inner(model.config), type(model.inner))


def test_tiny_spatial_factor_follows_the_config_and_a_mismatched_decoder_is_refused():
    three = {"encoder_block_out_channels": (8, 8, 8), "decoder_block_out_channels": (8, 8, 8),
             "num_encoder_blocks": (1, 1, 1), "num_decoder_blocks": (1, 1, 1)}
    assert wrap_tiny(_build("tiny", **three)).spatial_factor == 4
    with pytest.raises(ConfigError, match="downsamples 8x but the decoder upsamples 4x"):
        wrap_tiny(_build("tiny", decoder_block_out_channels=(8, 8, 8), num_decoder_blocks=(1, 1, 1)))


def test_a_decoder_returning_other_channels_is_refused():
    with pytest.raises(ConfigError) as info:
        wrap_kl(_build("kl-sd", out_channels=1))
    assert "out_channels 1 differs from in_channels 3" in str(info.value)
    assert "\n" not in str(info.value)


def test_check_contract_refuses_a_frame_vae_without_decode():
    class EncodeOnly(nn.Module):
        in_channels, latent_channels, spatial_factor = 3, 4, 8

        def encode(self, images):
            return images

    with pytest.raises(ConfigError) as info:
        check_contract(EncodeOnly(), "my.module:factory")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("my.module:factory is a frame VAE without decode")
