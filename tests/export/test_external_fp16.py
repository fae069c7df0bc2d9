"""The gpu-fp16 profile on external VAEs (issue 15): the fp16 graphs of a diffusers AutoencoderKL and of a
Wan-style causal VAE (four graphs, state carried between them) convert, pass the ONNX checker, and decode
the real clip's frames at >= 45 dB PSNR against the fp32 PyTorch reference, measured by the export-time
parity check on ONNX Runtime's CPU provider (the graphs are the ones a GPU backend would load)."""

import json

import diffusers
import pytest
import torch

from vae_deploy.export.jobs import export_job

DECODER_FLOOR_DB = 45.0  # the floor for fp16 decoders on real frames


def _kl(folder):
    torch.manual_seed(0)
    diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                            layers_per_block=1, latent_channels=4,
                            norm_num_groups=8).save_pretrained(folder)


def _wan(folder):
    torch.manual_seed(0)
    diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                               latents_std=[1.0] * 4).save_pretrained(folder)


# Real frames decoded by the parity check: Wan's 5 are its smallest whole clip, 1 + 4 (the first-chunk graphs
# and one steady step); the default 16 at 128 px triple the time of a Wan export on a 2-core machine.
@pytest.mark.parametrize(("build", "real"), [(_kl, 16), pytest.param(_wan, 5, marks=pytest.mark.slow)], ids=["autoencoder-kl", "wan"])
def test_fp16_export_decodes_real_frames_above_the_floor(tmp_path, build, real):
    build(tmp_path / "src")
    result = export_job(tmp_path / "src", tmp_path / "m", profile="gpu-fp16", real=real,
                        parity_backend="ort-cpu")
    assert result.report.passed, result.report.error()
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    real = [c for c in manifest["parity"]["comparisons"]
            if c["case"] == "real" and c["graph"] == "decoder" and c["output"] == "video"]
    assert real, "the parity check decoded no real frames"
    assert all(c["psnr_db"] == "inf" or float(c["psnr_db"]) >= DECODER_FLOOR_DB for c in real), real
