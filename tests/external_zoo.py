"""Tiny diffusers VAEs for the end-to-end tests of external models: each family and layout vae-deploy adapts
(AutoencoderKL in the SD 1.x and SD3/Flux layouts, AutoencoderTiny, AutoencoderKLWan in the Wan 2.1 and
Wan 2.2 layouts) at tiny widths with random weights from a fixed seed, saved with diffusers' own
save_pretrained, and exported once per test session by `vae-deploy export` run as a real process.

Importable from any test module (like cli_support); a test module imports the fixtures it uses:

    from external_zoo import external_folder, external_model  # noqa: F401 (pytest fixtures)

Both fixtures are session-scoped and return a getter (name -> path), so a model is built or exported only
when a test first asks for it. The folders are shared: a test that modifies one copies it first.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import cli_process
from shared_artifacts import build_once

# AutoencoderKL with four blocks: 8x like the real SD/Flux VAEs, so the mid-block attention runs over
# (H/8)(W/8) positions, not (H/2)(W/2) (two blocks make 64x80 latents at 128 px: thousands of tokens).
KL_BLOCKS = {"block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 8,
             "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
WAN_STATS = {"latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 2.0, 0.5, 1.0]}

# name -> (diffusers class, constructor arguments)
CONFIGS: dict[str, tuple[str, dict]] = {
    # SD 1.x/SDXL style: 4 latent channels, quant convs, a scaling factor and no shift
    "kl-sd": ("AutoencoderKL", {**KL_BLOCKS, "latent_channels": 4}),
    # SD3/Flux style: 16 latent channels, no quant convs, scaling and shift factors
    "kl-sd3": ("AutoencoderKL", {**KL_BLOCKS, "latent_channels": 16, "scaling_factor": 1.5305,
                                 "shift_factor": 0.0609, "use_quant_conv": False,
                                 "use_post_quant_conv": False}),
    # TAESD's four stages (8x) at tiny widths
    "tiny": ("AutoencoderTiny", {"encoder_block_out_channels": (8, 8, 8, 8),
                                 "decoder_block_out_channels": (8, 8, 8, 8),
                                 "num_encoder_blocks": (1, 1, 1, 1), "num_decoder_blocks": (1, 1, 1, 1),
                                 "latent_channels": 4}),
    # Wan 2.1's layout (the class defaults) at tiny widths: 8x spatial, 4x temporal
    "wan2.1": ("AutoencoderKLWan", {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                                    "temperal_downsample": [False, True, True], **WAN_STATS}),
    # Wan 2.2's (TI2V-5B: residual blocks, 2x2 patches into 12 channels, its own decoder width): 16x spatial
    "wan2.2": ("AutoencoderKLWan", {"base_dim": 8, "decoder_base_dim": 12, "z_dim": 4,
                                    "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                                    "temperal_downsample": [False, True, True], "is_residual": True,
                                    "in_channels": 12, "out_channels": 12, "patch_size": 2,
                                    "scale_factor_spatial": 16, **WAN_STATS}),
}
NAMES = tuple(CONFIGS)
FRAME_MODELS = ("kl-sd", "kl-sd3", "tiny")  # every frame on its own
WAN_MODELS = ("wan2.1", "wan2.2")  # causal, with first-chunk graphs
# A Wan export's graphs: the whole ones and the parts they are joined from (split at latent resolution)
WAN_WHOLE_GRAPHS = ("encoder", "decoder", "encoder_first", "decoder_first")
WAN_PART_GRAPHS = tuple(f"{graph}_{part}{first}" for graph in ("encoder", "decoder")
                        for part in ("pixels", "latents") for first in ("", "_first"))
WAN_GRAPHS = frozenset(WAN_WHOLE_GRAPHS + WAN_PART_GRAPHS)
KINDS = {"AutoencoderKL": "diffusers-autoencoder-kl", "AutoencoderTiny": "diffusers-autoencoder-tiny",
         "AutoencoderKLWan": "diffusers-autoencoder-kl-wan"}
# Real frames the export's parity check (and its golden data) uses: 5 = Wan's 1 + 4, the smallest whole
# clip there is; the default (16 frames at 128 px) triples the time of a Wan export on a 2-core machine.
EXPORT_REAL_FRAMES = 5


def diffusers_class(name: str):
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its advice to install accelerate is noise in test output
    return getattr(diffusers, CONFIGS[name][0])


def build(name: str, seed: int = 0):
    """The diffusers model `name` with random weights from `seed`, in eval mode."""
    import torch

    torch.manual_seed(seed)
    return diffusers_class(name)(**CONFIGS[name][1]).eval()


def load_theirs(name: str, folder: Path):
    """diffusers' own model from a saved folder: the reference the exported graphs are judged against."""
    return diffusers_class(name).from_pretrained(str(folder)).eval()


@pytest.fixture(scope="session")
def external_folder(tmp_path_factory):
    """name -> a diffusers model folder (config.json + diffusion_pytorch_model.safetensors) written by
    save_pretrained. Read-only: copy before modifying."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_once(tmp_path_factory, f"diffusers_{name}",
                                     lambda root: build(name).save_pretrained(str(root / name))) / name
        return built[name]

    return get


@dataclass(frozen=True)
class ExportedModel:
    name: str
    source: Path  # the diffusers folder exported
    model_dir: Path  # the model folder `vae-deploy export` wrote
    export: subprocess.CompletedProcess  # that export process: its exit code and output


@pytest.fixture(scope="session")
def external_model(tmp_path_factory, external_folder):
    """name -> ExportedModel: the diffusers folder exported by `vae-deploy export SOURCE --out M` as a real
    process with the default profile. Read-only: copy before modifying."""
    exported: dict[str, ExportedModel] = {}

    def get(name: str) -> ExportedModel:
        if name not in exported:
            source = external_folder(name)
            root = build_once(tmp_path_factory, f"exported_{name}", lambda root: _export(source, root))
            output = json.loads((root / EXPORT_OUTPUT).read_text())
            export = subprocess.CompletedProcess(output["args"], 0, output["stdout"], output["stderr"])
            exported[name] = ExportedModel(name, source, root / "model", export)
        return exported[name]

    return get


EXPORT_OUTPUT = "export-output.json"  # the export process's command line and output, beside the model


def _export(source: Path, root: Path) -> None:
    result = cli_process("export", source, "--out", root / "model", "--real", EXPORT_REAL_FRAMES, timeout=600)
    assert result.returncode == 0, (result.stdout, result.stderr)
    (root / EXPORT_OUTPUT).write_text(json.dumps({"args": [str(a) for a in result.args],
                                                  "stdout": result.stdout, "stderr": result.stderr}))
