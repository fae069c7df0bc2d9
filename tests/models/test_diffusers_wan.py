"""diffusers' AutoencoderKLWan (Wan 2.1 and Wan 2.2 layouts) through vae-deploy's own loader: real diffusers
models from tiny random configs, saved with save_pretrained and loaded back with load_diffusers_folder,
streamed (first rule, then steps of several lengths) against diffusers' public whole-clip encode/decode, and
exported to ONNX as four step graphs whose causal caches are explicit past_i/present_i tensors, streamed in
onnxruntime at two frame sizes."""

from __future__ import annotations

import warnings
from pathlib import Path

import diffusers
import numpy as np
import onnxruntime as ort
import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample
from torch import nn

from vae_deploy.errors import ConfigError, InputShapeError
from vae_deploy.export.specs import graph_specs
from vae_deploy.export.tiling import measured_halo
from vae_deploy.models.adapters import AdaptedVAE, AdapterConfig, load_diffusers_folder
from vae_deploy.models.adapters.diffusers_wan import wrap
from vae_deploy.models.registry import build_model
from vae_deploy.runtime.spec import SymDim, as_dim, eval_dim

TOL = 1e-5  # streamed PyTorch against diffusers' public API, fp32
ONNX_TOL = 1e-4  # streamed onnxruntime against diffusers' public API, fp32

STATS = {"latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 2.0, 0.5, 1.0]}
CONFIGS = {
    # Wan 2.1's layout (the class defaults) at tiny widths: 8x spatial, 4x temporal
    "wan2.1": {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
               "temperal_downsample": [False, True, True], **STATS},
    # Wan 2.2's (TI2V-5B: residual blocks, 2x2 patches into 12 channels, its own decoder width) at tiny
    # widths: 16x spatial
    "wan2.2": {"base_dim": 8, "decoder_base_dim": 12, "z_dim": 4, "dim_mult": [1, 2, 2, 2],
               "num_res_blocks": 1, "temperal_downsample": [False, True, True], "is_residual": True,
               "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16, **STATS},
}
NAMES = sorted(CONFIGS)
FRAMES, LATENT_FRAMES = 17, 5


def _build(name: str, seed: int = 0, **overrides) -> diffusers.AutoencoderKLWan:
    torch.manual_seed(seed)
    return diffusers.AutoencoderKLWan(**{**CONFIGS[name], **overrides}).eval()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, tuple[AdaptedVAE, nn.Module]]:
    """name -> (vae-deploy's AdaptedVAE from load_diffusers_folder, diffusers' own untouched model from the
    same folder: the reference)."""
    root = tmp_path_factory.mktemp("wan")
    out = {}
    for name in NAMES:
        _build(name).save_pretrained(str(root / name))
        out[name] = (load_diffusers_folder(root / name).eval(),
                     diffusers.AutoencoderKLWan.from_pretrained(str(root / name)).eval())
    return out


def _inputs(model: AdaptedVAE, size: tuple[int, int] = (32, 32), batch: int = 1, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    s = model.spatial_factor
    video = torch.rand(batch, FRAMES, 3, *size, generator=gen)
    z = torch.randn(batch, LATENT_FRAMES, model.latent_channels, size[0] // s, size[1] // s, generator=gen)
    return video, z


def _theirs(theirs: nn.Module, video: torch.Tensor, z: torch.Tensor):
    """diffusers' public whole-clip API in the contract's layout: mean, logvar (NTCHW), frames in [0, 1]."""
    with torch.no_grad():
        dist = theirs.encode((video * 2 - 1).permute(0, 2, 1, 3, 4)).latent_dist
        frames = (theirs.decode(z.permute(0, 2, 1, 3, 4)).sample + 1) / 2
    return dist.mean.permute(0, 2, 1, 3, 4), dist.logvar.permute(0, 2, 1, 3, 4), frames.permute(0, 2, 1, 3, 4)


def _max_abs(a, b) -> float:
    a, b = (torch.from_numpy(t) if isinstance(t, np.ndarray) else t for t in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _shapes(tensors) -> list[tuple]:
    return [tuple(t.shape) for t in tensors]


def _stream_encode(model: AdaptedVAE, video: torch.Tensor, chunks: list[int]):
    """encode_first on frame 0, then encode_step on `chunks` frames at a time; checks each present's shape."""
    n, _, _, h, w = video.shape
    want = model.encoder_state_shapes(n, h, w)
    mean, logvar, *state = model.encode_first(video[:, :1])
    assert _shapes(state) == want
    means, logvars, start = [mean], [logvar], 1
    for k in chunks:
        mean, logvar, *state = model.encode_step(video[:, start:start + k], *state)
        assert _shapes(state) == want, f"after a {k}-frame step"
        means.append(mean), logvars.append(logvar)
        start += k
    assert start == video.shape[1]
    return torch.cat(means, dim=1), torch.cat(logvars, dim=1)


def _stream_decode(model: AdaptedVAE, z: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    n, _, _, h, w = z.shape
    want = model.decoder_state_shapes(n, h, w)
    frames, *state = model.decode_first(z[:, :1])
    assert _shapes(state) == want
    out, start = [frames], 1
    for k in chunks:
        frames, *state = model.decode_step(z[:, start:start + k], *state)
        assert _shapes(state) == want, f"after a {k}-latent-frame step"
        out.append(frames)
        start += k
    assert start == z.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_loaded_wan_keeps_the_causal_contract_with_the_configs_factors(loaded, name):
    model, theirs = loaded[name]
    assert model.kind == "diffusers-autoencoder-kl-wan" and model.traits.causal
    assert (model.in_channels, model.latent_channels) == (3, 4)
    assert model.spatial_factor == {"wan2.1": 8, "wan2.2": 16}[name] == theirs.config.scale_factor_spatial
    assert (model.temporal_factor, model.first_frames) == (4, 1)
    assert model.has_logvar
    assert model.latent_normalization == {"shift": STATS["latents_mean"],
                                          "scale": [1 / s for s in STATS["latents_std"]]}
    # the 1x1x1 shortcut convs never use their cache slot, so they carry no state
    n_convs = sum(isinstance(m, nn.Conv3d) for m in theirs.decoder.modules())
    shortcuts = sum(isinstance(m, nn.Conv3d) and m.kernel_size == (1, 1, 1) for m in theirs.decoder.modules())
    assert shortcuts > 0 and len(model.decoder_state_shapes(1, 4, 4)) == n_convs - shortcuts


def test_nearest_replaces_nearest_exact_and_changes_no_output(loaded):
    """The legacy ONNX exporter has no 'nearest-exact'; at a scale of 2 'nearest' picks the same pixels."""
    model, theirs = loaded["wan2.1"]
    ours_up = [m for m in model.inner.vae.modules() if isinstance(m, WanUpsample)]
    their_up = [m for m in theirs.modules() if isinstance(m, WanUpsample)]
    assert ours_up and {m.mode for m in ours_up} == {"nearest"}
    assert {m.mode for m in their_up} == {"nearest-exact"}
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(3))  # odd sizes too
    assert _max_abs(ours_up[0](x), their_up[0](x)) == 0.0
    for name in NAMES:
        model, theirs = loaded[name]
        video, z = _inputs(model)
        with torch.no_grad():
            ours = model.reference_decode(z)[0]
        assert _max_abs(ours, _theirs(theirs, video, z)[2]) == 0.0, name


@pytest.mark.parametrize("name", NAMES)
def test_streamed_encoder_equals_diffusers_encode_of_the_whole_clip(loaded, name):
    model, theirs = loaded[name]
    video, z = _inputs(model, batch=2)
    want_mean, want_logvar, _ = _theirs(theirs, video, z)
    with torch.no_grad():
        for chunks in ([4, 4, 4, 4], [8, 8], [4, 8, 4], [16]):
            mean, logvar = _stream_encode(model, video, chunks)
            err = {"mean": _max_abs(mean, want_mean), "logvar": _max_abs(logvar, want_logvar)}
            assert max(err.values()) <= TOL, f"{name}, 1 + {chunks} frames: {err}"


@pytest.mark.parametrize("name", NAMES)
def test_streamed_decoder_equals_diffusers_decode_of_the_whole_clip(loaded, name):
    model, theirs = loaded[name]
    video, z = _inputs(model, batch=2)
    want = _theirs(theirs, video, z)[2]
    assert want.shape == (2, FRAMES, 3, 32, 32)
    with torch.no_grad():
        for chunks in ([1, 1, 1, 1], [1, 2, 1], [4]):
            err = _max_abs(_stream_decode(model, z, chunks), want)
            assert err <= TOL, f"{name}, 1 + {chunks} latent frames: {err}"


@pytest.mark.parametrize("name", NAMES)
def test_adapted_encode_and_decode_of_a_clip_equal_the_references(loaded, name):
    model, theirs = loaded[name]
    video, z = _inputs(model, size=(48, 32))
    want_mean, want_logvar, want_frames = _theirs(theirs, video, z)
    with torch.no_grad():
        mean, logvar = model.encode(video)
        frames = model.decode(z)
        ref_mean, ref_logvar = model.reference_encode(video)
        (ref_frames,) = model.reference_decode(z)
    err = {"mean": _max_abs(mean, want_mean), "logvar": _max_abs(logvar, want_logvar),
           "frames": _max_abs(frames, want_frames), "reference mean": _max_abs(ref_mean, want_mean),
           "reference logvar": _max_abs(ref_logvar, want_logvar),
           "reference frames": _max_abs(ref_frames, want_frames)}
    assert max(err.values()) <= TOL, f"{name}: {err}"
    assert frames.min() >= 0 and frames.max() <= 1  # diffusers' clamp to [-1, 1], mapped


@pytest.mark.parametrize("name", NAMES)
def test_state_shapes_are_what_the_shape_functions_say_for_chunks_of_4_and_8(loaded, name):
    model, _ = loaded[name]
    s = model.spatial_factor
    video, z = _inputs(model, size=(48, 32), batch=2)
    enc = model.encoder_state_shapes(2, 48, 32)
    dec = model.decoder_state_shapes(2, 48 // s, 32 // s)
    with torch.no_grad():
        _, _, *first = model.encode_first(video[:, :1])
        for k in (4, 8):
            _, _, *present = model.encode_step(video[:, 1:1 + k], *first)
            assert _shapes(present) == _shapes(first) == enc, k
        _, *first = model.decode_first(z[:, :1])
        for t in (1, 2):  # 4 and 8 frames
            frames, *present = model.decode_step(z[:, 1:1 + t], *first)
            assert frames.shape[1] == 4 * t
            assert _shapes(present) == _shapes(first) == dec, t
    # heights and widths scale on their own, from the full frame (encoder) or the latent (decoder) size
    assert {sh[3] * 2 == sh[4] * 3 for sh in enc + dec} == {True}
    assert enc[0][3:] == (48 // model.inner.patch_size, 32 // model.inner.patch_size)
    assert dec[0][3:] == (48 // s, 32 // s) and dec[-1][3:] == (48 // model.inner.patch_size,
                                                                32 // model.inner.patch_size)
    assert {sh[2] for sh in enc} == {1, 2} and {sh[2] for sh in dec} == {2}  # downsample3d keeps 1 frame
    # the export records the formulas by calling the functions with symbols; they give the same numbers
    sym = [SymDim("batch"), SymDim("height"), SymDim("width")]
    env = {"batch": 2, "height": 48, "width": 32}
    for got, want in ((model.encoder_state_shapes(*sym), enc),
                      (model.decoder_state_shapes(*sym), model.decoder_state_shapes(2, 48, 32))):
        assert [tuple(eval_dim(as_dim(d), env) for d in sh) for sh in got] == want


class _Method(nn.Module):
    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args):
        return tuple(getattr(self.model, self.method)(*args))


def _export(model: AdaptedVAE, method: str, args: tuple, path: Path, data_in: str, data_out: list[str],
            stream_axis: str | None) -> None:
    """One method as a graph: data input, past_i -> data outputs, present_i; batch, the stream axis, height,
    width and every state tensor's height and width dynamic."""
    n_state = len(model.encoder_state_shapes(1, 32, 32) if "encode" in method
                  else model.decoder_state_shapes(1, 2, 2))
    data_axes = {0: "batch", 3: "height", 4: "width"} | ({1: stream_axis} if stream_axis else {})
    out_axes = {0: "batch", 1: "out_frames", 3: "out_height", 4: "out_width"}
    state_axes = {i: {0: "batch", 3: f"state{i}_h", 4: f"state{i}_w"} for i in range(n_state)}
    past = [f"past_{i}" for i in range(n_state)] if method.endswith("_step") else []
    present = [f"present_{i}" for i in range(n_state)]
    axes = {data_in: data_axes, **{o: out_axes for o in data_out}}
    axes.update({name: state_axes[i] for names in (past, present) for i, name in enumerate(names)})
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes: chosen on purpose
        warnings.simplefilter("ignore")
        torch.onnx.export(_Method(model, method).eval(), args, str(path), dynamo=False, opset_version=17,
                          input_names=[data_in, *past], output_names=[*data_out, *present], dynamic_axes=axes)


class _OrtStream:
    """The four exported graphs, streamed with onnxruntime: each present_i fed back as the next past_i."""

    def __init__(self, folder: Path):
        self.sessions = {name: ort.InferenceSession(str(folder / f"{name}.onnx"),
                                                    providers=["CPUExecutionProvider"])
                         for name in ("encode_first", "encode_step", "decode_first", "decode_step")}

    def _run(self, name: str, data_in: str, x: np.ndarray, state: list[np.ndarray], n_data: int):
        feeds = {data_in: x, **{f"past_{i}": s for i, s in enumerate(state)}}
        out = self.sessions[name].run(None, feeds)
        return out[:n_data], out[n_data:]

    def encode(self, video: np.ndarray, chunks: list[int], want_state: list[tuple]):
        (mean, logvar), state = self._run("encode_first", "video", video[:, :1], [], 2)
        assert _shapes(state) == want_state
        means, logvars, start = [mean], [logvar], 1
        for k in chunks:
            (mean, logvar), state = self._run("encode_step", "video", video[:, start:start + k], state, 2)
            assert _shapes(state) == want_state, f"after a {k}-frame step"
            means.append(mean), logvars.append(logvar)
            start += k
        return np.concatenate(means, axis=1), np.concatenate(logvars, axis=1)

    def decode(self, z: np.ndarray, chunks: list[int], want_state: list[tuple]) -> np.ndarray:
        (frames,), state = self._run("decode_first", "z", z[:, :1], [], 1)
        assert _shapes(state) == want_state
        out, start = [frames], 1
        for k in chunks:
            (frames,), state = self._run("decode_step", "z", z[:, start:start + k], state, 1)
            assert _shapes(state) == want_state, f"after a {k}-latent-frame step"
            out.append(frames)
            start += k
        return np.concatenate(out, axis=1)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_graphs_of_the_four_methods_stream_like_diffusers_at_two_sizes(loaded, name, tmp_path):
    model, theirs = loaded[name]
    s = model.spatial_factor
    # traced at batch 1, 32x32, 8 frames / 2 latent frames per step; run at other batches, sizes and lengths
    video, z = _inputs(model, batch=1)
    enc_state = model.init_encoder_state(1, 32, 32)
    dec_state = model.init_decoder_state(1, 32 // s, 32 // s)
    _export(model, "encode_first", (video[:, :1],), tmp_path / "encode_first.onnx", "video",
            ["mean", "logvar"], None)
    _export(model, "encode_step", (video[:, 1:9], *enc_state), tmp_path / "encode_step.onnx", "video",
            ["mean", "logvar"], "frames")
    _export(model, "decode_first", (z[:, :1],), tmp_path / "decode_first.onnx", "z", ["video"], None)
    _export(model, "decode_step", (z[:, 1:3], *dec_state), tmp_path / "decode_step.onnx", "z", ["video"],
            "latent_frames")
    graphs = _OrtStream(tmp_path)
    for batch, size in ((2, (32, 32)), (1, (48, 32))):
        video, z = _inputs(model, size=size, batch=batch, seed=5)
        want_mean, want_logvar, want_frames = _theirs(theirs, video, z)
        h, w = size
        mean, logvar = graphs.encode(video.numpy(), [4, 8, 4], model.encoder_state_shapes(batch, h, w))
        frames = graphs.decode(z.numpy(), [1, 2, 1], model.decoder_state_shapes(batch, h // s, w // s))
        err = {"mean": _max_abs(mean, want_mean), "logvar": _max_abs(logvar, want_logvar),
               "frames": _max_abs(frames, want_frames)}
        assert max(err.values()) <= ONNX_TOL, f"{name} at batch {batch}, {size}: {err}"


def test_build_inner_from_the_config_rebuilds_the_loaded_model(loaded):
    for name in NAMES:
        model, _ = loaded[name]
        config = AdapterConfig(class_name="AutoencoderKLWan", config=model.config.config)
        rebuilt = build_model(model.kind, config).eval()  # the kind's record: what a checkpoint does
        rebuilt.load_state_dict(model.state_dict())
        video, z = _inputs(model)
        with torch.no_grad():
            assert torch.equal(rebuilt.encode(video)[0], model.encode(video)[0]), name
            assert torch.equal(rebuilt.decode(z), model.decode(z)), name
        assert rebuilt.encoder_state_shapes(1, 32, 32) == model.encoder_state_shapes(1, 32, 32)


def test_configs_it_cannot_stream_are_refused_in_one_line():
    with pytest.raises(ConfigError) as info:
        wrap(_build("wan2.1", latents_mean=[0.0] * 16, latents_std=[1.0] * 16))
    assert "z_dim = 4 entries, got 16 and 16" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        wrap(_build("wan2.1", temperal_downsample=[False, False, True]))
    assert "compresses time by 2" in str(info.value) and "\n" not in str(info.value)


def test_chunks_of_a_length_diffusers_never_walks_are_refused(loaded):
    """Wan 2.2's AvgDown3D would silently pad a 2-frame chunk; the steps refuse it instead."""
    model, _ = loaded["wan2.2"]
    video, z = _inputs(model)
    state = model.init_encoder_state(1, 32, 32)
    with torch.no_grad(), pytest.raises(InputShapeError, match=r"encode_step takes a positive multiple of 4"):
        model.encode_step(video[:, 1:3], *state)
    with torch.no_grad(), pytest.raises(InputShapeError, match=r"encode_first takes 1 frame"):
        model.encode_first(video[:, :5])
    with torch.no_grad(), pytest.raises(InputShapeError, match=r"decode_first takes 1 latent frame"):
        model.decode_first(z[:, :2])


@pytest.mark.parametrize("name", NAMES)
def test_the_parts_split_at_latent_resolution_are_the_whole_steps(loaded, name):
    """The LatentSplit parts (what tiles exactly) compute, run one after the other, what the whole first and
    steady steps compute, bit for bit, state included: export joins their graphs into the whole ones."""
    vae, _ = loaded[name]
    point = vae.split_point
    assert point is not None and 0 < point.encoder_pixel_states < len(vae.encoder_state_shapes(1, 32, 32))
    torch.manual_seed(1)
    video = torch.rand(1, 9, 3, 64, 96)
    with torch.no_grad():
        first = vae.encode_first(video[:, :1])
        step = vae.encode_step(video[:, 1:], *first[2:])
        pixels = vae.encode_pixels_first(video[:, :1])
        latents = vae.encode_latents_first(pixels[0])
        assert all(torch.equal(a, b) for a, b in zip(first, (*latents[:2], *pixels[1:], *latents[2:]),
                                                     strict=True))
        pixels = vae.encode_pixels_step(video[:, 1:], *pixels[1:])
        latents = vae.encode_latents_step(pixels[0], *latents[2:])
        assert all(torch.equal(a, b) for a, b in zip(step, (*latents[:2], *pixels[1:], *latents[2:]),
                                                     strict=True))
        z = torch.cat([first[0], step[0]], dim=1)
        whole = vae.decode_first(z[:, :1])
        whole_step = vae.decode_step(z[:, 1:], *whole[1:])
        head = vae.decode_latents_first(z[:, :1])
        tail = vae.decode_pixels_first(head[0])
        assert all(torch.equal(a, b) for a, b in zip(whole, (tail[0], *head[1:], *tail[1:]), strict=True))
        head = vae.decode_latents_step(z[:, 1:], *head[1:])
        tail = vae.decode_pixels_step(head[0], *tail[1:])
        assert all(torch.equal(a, b) for a, b in zip(whole_step, (tail[0], *head[1:], *tail[1:]),
                                                     strict=True))


def test_the_narrow_copy_has_the_receptive_fields_of_the_model(loaded):
    """Export measures the halos on `narrow()` (Wan 2.1's own widths need more than 20 GB to measure them
    on): the copy's fields are the model's. Wan 2.2's tiny decoder is 12 wide, its copy 8."""
    model, _ = loaded["wan2.2"]
    narrow = model.narrow()
    assert narrow.inner.vae.config.decoder_base_dim < model.inner.vae.config.decoder_base_dim
    specs = graph_specs(model.kind, None, model)
    narrow_specs = graph_specs(model.kind, None, narrow)
    for name in ("encoder_pixels", "decoder_pixels"):
        halo = measured_halo(model, specs[name], 24)
        assert halo and halo == measured_halo(narrow, narrow_specs[name], 24), name
