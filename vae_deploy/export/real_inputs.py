"""Real encoder inputs for the parity check, taken by `export` (judged and stored as golden data) and by
`verify` against PyTorch: the same inputs a model meets in use, so a backend is judged on them too.

Per model kind, a loader in REAL_INPUTS gives n inputs in the encoder's layout (the MLP: MNIST test images).
Video models (encoders with a stream axis) need no entry: they take the first frames (at most
REAL_VIDEO_FRAMES) of the REAL_VIDEO_CLIP sample clip, fitted to the model as `run` fits frames
(video/fit.py). That clip ships inside the package (vae_deploy/assets/clips), so every install has it.
Other kinds without an entry are checked on random inputs only (the report then has no "real" rows).

Torch-free: verify on an edge install imports this.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vae_deploy.errors import DataError
from vae_deploy.runtime.spec import GraphSpec

RealInputs = Callable[[int, str, Path | None], np.ndarray]  # (n, data source, data folder) -> batch
REAL_VIDEO_CLIP = "carphone_pristine"  # never trained on: the recipes' test clip, the default model's
# validation clip (data/video.py VideoDataConfig)
REAL_VIDEO_FRAMES = 16  # at most; a multiple of every temporal stride
REAL_INPUTS: dict[str, RealInputs] = {}


def _mnist_test_images(n: int, source: str, data_dir: Path | None) -> np.ndarray:
    from vae_deploy.data.mnist import load_mnist

    images = load_mnist("test", source=source, data_dir=data_dir).images[:n]
    return (images.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28) in [0, 1], as training sees them


REAL_INPUTS["mlp"] = _mnist_test_images


def real_inputs_for(kind: str, n: int, source: str, data_dir: Path | None,
                    encoder: GraphSpec) -> np.ndarray | None:
    """n real encoder inputs (video models: a clip of up to REAL_VIDEO_FRAMES frames); None for n <= 0 or
    a kind with no real inputs. `source` and `data_dir` say where MNIST is read from."""
    from vae_deploy.video.fit import fitted_clip
    from vae_deploy.video.samples import sample_video_path

    if n <= 0:
        return None
    if encoder.stream_axis:
        return fitted_clip(sample_video_path(REAL_VIDEO_CLIP), encoder, min(n, REAL_VIDEO_FRAMES))
    loader = REAL_INPUTS.get(kind)
    if loader is None:
        return None
    try:
        return loader(n, source, data_dir)
    except DataError as exc:
        raise DataError(f"{exc} (or pass --real 0 to check on random inputs only)") from exc
