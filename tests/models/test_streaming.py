"""Streaming equals full sequence, for every video model, encoder and decoder (the issue's floor: max abs
error <= 1e-5 in fp32 for chunks of 1, 2, 3, 5 and 8 frames, in temporal groups for the 3D VAE)."""

from __future__ import annotations

import pytest
import torch
from video_zoo import (
    TINY_VIDEO_CONFIGS,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    perturbed,
    tiny_model,
)

from vae_deploy.errors import InputShapeError
from vae_deploy.models import build_model
from vae_deploy.models.streaming import StreamDecoder, StreamEncoder, pad_time
from vae_deploy.runtime.spec import SymDim, as_dim, eval_dim

CHUNKS = (1, 2, 3, 5, 8)
LATENT_FRAMES = 12  # long enough that the temporal model's 2 layers x (W - 1) receptive field fills up
TOL = 1e-5


def _run_chunks(step, x, state, chunk):
    """Feed x through step(chunk, *state) -> (*outputs, *new_state); concatenate each output over time."""
    pieces = []
    for start in range(0, x.shape[1], chunk):
        result = step(x[:, start:start + chunk], *state)
        n_out = len(result) - len(state)
        pieces.append(result[:n_out])
        state = result[n_out:]
    return [torch.cat(parts, dim=1) for parts in zip(*pieces, strict=True)]


@pytest.mark.parametrize("name", sorted(TINY_VIDEO_CONFIGS))
def test_chunked_encoder_and_decoder_equal_full_sequence(name):
    model = tiny_model(name)
    f = model.temporal_factor
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(2, LATENT_FRAMES * f, 3, 32, 32, generator=gen)
    z = torch.randn(2, LATENT_FRAMES, model.latent_channels, 4, 4, generator=gen)
    with torch.no_grad():
        mu_full, logvar_full = model.encode(video)
        frames_full = model.decode(z)
        assert mu_full.shape == (2, LATENT_FRAMES, model.latent_channels, 4, 4)
        assert frames_full.shape == video.shape
        for chunk in CHUNKS:
            mu, logvar = _run_chunks(model.encode_step, video, model.init_encoder_state(2, 32, 32), chunk * f)
            (frames,) = _run_chunks(model.decode_step, z, model.init_decoder_state(2, 4, 4), chunk)
            err = {"mu": (mu - mu_full).abs().max().item(),
                   "logvar": (logvar - logvar_full).abs().max().item(),
                   "frames": (frames - frames_full).abs().max().item()}
            assert max(err.values()) <= TOL, f"{name}, chunks of {chunk * f} frames: {err}"


@pytest.mark.parametrize("name", sorted(TINY_VIDEO_CONFIGS))
def test_outputs_never_depend_on_the_future(name):
    model = tiny_model(name)
    f = model.temporal_factor
    gen = torch.Generator().manual_seed(2)
    video = torch.rand(1, 6 * f, 3, 32, 32, generator=gen)
    z = torch.randn(1, 6, model.latent_channels, 4, 4, generator=gen)
    changed_video, changed_z = video.clone(), z.clone()
    changed_video[:, 3 * f:] = torch.rand(1, 3 * f, 3, 32, 32, generator=gen)
    changed_z[:, 3:] = torch.randn(1, 3, model.latent_channels, 4, 4, generator=gen)
    with torch.no_grad():
        mu_a, _ = model.encode(video)
        mu_b, _ = model.encode(changed_video)
        out_a, out_b = model.decode(z), model.decode(changed_z)
    assert torch.equal(mu_a[:, :3], mu_b[:, :3])
    assert torch.equal(out_a[:, :3 * f], out_b[:, :3 * f])
    assert not torch.equal(mu_a[:, 3:], mu_b[:, 3:])  # the change is visible from its own group on
    assert not torch.equal(out_a[:, 3 * f:], out_b[:, 3 * f:])


def test_temporal_attention_is_limited_to_its_window():
    """One layer, W = 3: frame t sees latents t-2..t, and nothing older."""
    _, config = TINY_VIDEO_CONFIGS["temporal"]
    model = perturbed(build_model("temporal", {**config, "layers": 1, "window": 3}))
    z = torch.randn(1, 8, model.latent_channels, 4, 4, generator=torch.Generator().manual_seed(3))
    changed = z.clone()
    changed[:, 2] += 1.0
    with torch.no_grad():
        a, b = model.decode(z), model.decode(changed)
    moved = [(a[:, t] - b[:, t]).abs().max().item() > 0 for t in range(8)]
    assert moved == [False, False, True, True, True, False, False, False]


def test_temporal_mask_hides_whatever_sits_in_invalid_slots():
    """Past slots marked invalid never reach the attention: filling them with noise changes nothing."""
    model = tiny_model("temporal")
    z = torch.randn(2, 4, model.latent_channels, 4, 4, generator=torch.Generator().manual_seed(6))
    valid, *hist = model.init_decoder_state(2, 4, 4)
    noisy = [torch.randn_like(h) * 10 for h in hist]
    with torch.no_grad():
        clean_out, *_ = model.decode_step(z, valid, *hist)
        noisy_out, *_ = model.decode_step(z, valid, *noisy)
        marked_out, *_ = model.decode_step(z, torch.ones_like(valid), *noisy)
    assert torch.equal(clean_out, noisy_out)
    assert not torch.allclose(clean_out, marked_out)  # the same noise, marked valid, is attended to


@pytest.mark.parametrize("name", ["causal3d-t2", "causal3d-t4", "temporal"])
def test_stream_wrappers_take_ragged_chunks_and_flush(name):
    model = tiny_model(name)
    f = model.temporal_factor
    gen = torch.Generator().manual_seed(4)
    video = torch.rand(1, 4 * f + 3, 3, 32, 32, generator=gen)  # not a whole number of groups when f > 1
    with torch.no_grad():
        mu_full, logvar_full = model.encode(pad_time(video, f))
        frames_full = model.decode(mu_full)
        encoder = StreamEncoder(model, 1, 32, 32)
        decoder = StreamDecoder(model, 1, 4, 4)
        mus, frames, start = [], [], 0
        for size in (1, 0, 2, 3, 5, 1, 4, 8):
            mu, _ = encoder.push(video[:, start:start + size])
            start += size
            mus.append(mu)
            frames.append(decoder.push(mu))
        mu, _ = encoder.flush()
        mus.append(mu)
        frames.append(decoder.push(mu))
    assert start >= video.shape[1] and encoder.frames_in == video.shape[1]
    assert encoder.padded == (-video.shape[1]) % f
    assert (torch.cat(mus, 1) - mu_full).abs().max().item() <= TOL
    streamed = torch.cat(frames, 1)
    assert streamed.shape[1] == video.shape[1] + encoder.padded
    assert (streamed - frames_full).abs().max().item() <= TOL
    with pytest.raises(InputShapeError, match="flushed"):
        encoder.push(video[:, :1])


def test_pad_time_repeats_the_last_frame():
    video = torch.arange(5.0).reshape(1, 5, 1, 1, 1)
    assert pad_time(video, 4).flatten().tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert pad_time(video, 5) is video


@pytest.mark.parametrize("name", sorted(TINY_VIDEO_CONFIGS))
def test_state_shapes_are_symbolic_formulas(name):
    """The export records state shapes as formulas by calling the shape functions with symbols."""
    model = tiny_model(name)
    env = {"batch": 3, "height": 48, "width": 40, "lh": 6, "lw": 5}
    sym = {k: SymDim(k) for k in env}
    enc = model.encoder_state_shapes(sym["batch"], sym["height"], sym["width"])
    dec = model.decoder_state_shapes(sym["batch"], sym["lh"], sym["lw"])
    assert [tuple(eval_dim(as_dim(d), env) for d in s) for s in enc] == \
        [tuple(s.shape) for s in model.init_encoder_state(3, 48, 40)]
    assert [tuple(eval_dim(as_dim(d), env) for d in s) for s in dec] == \
        [tuple(s.shape) for s in model.init_decoder_state(3, 6, 5)]


def test_wrong_state_is_refused_with_shapes():
    model = tiny_model("causal3d-t1")
    state = model.init_encoder_state(1, 32, 32)
    with pytest.raises(InputShapeError, match=r"encoder state must be"):
        model.encode_step(torch.rand(1, 2, 3, 32, 32), *state[:-1])
    with pytest.raises(InputShapeError, match=r"encoder state must be \[\(1, 12, 2, 24, 16\)"):
        model.encode_step(torch.rand(1, 2, 3, 48, 32), *state)  # a state made for another frame size
    with pytest.raises(InputShapeError, match=r"got \(1, 2, 3, 30, 32\)"):
        model.encode_step(torch.rand(1, 2, 3, 30, 32), *state)
