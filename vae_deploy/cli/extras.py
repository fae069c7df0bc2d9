"""What the PyTorch-side commands need from the train extra, said in one line where it is missing.

The edge install (`pip install vae-deploy`) has no torch; `train`, `evaluate` and `export` import it (and
safetensors, matplotlib, onnxconverter-common, scikit-image) inside their functions. Without this, a missing
package would surface as a ModuleNotFoundError traceback from deep inside; here it becomes a
MissingBackendError naming the extra to install. Torch-free itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vae_deploy.errors import MissingBackendError
from vae_deploy.runtime.runner import module_available

TRAIN_EXTRA = "pip install 'vae-deploy[train]'"
# Top-level modules of the train extra's packages (pyproject.toml [project.optional-dependencies] train).
TRAIN_MODULES = ("torch", "safetensors", "matplotlib", "onnxconverter_common", "skimage")


def _message(command: str, module: str) -> str:
    return f"`vae-deploy {command}` needs {module}, which is not installed (the PyTorch side): {TRAIN_EXTRA}"


@contextlib.contextmanager
def train_extra(command: str, needs: tuple[str, ...] = ("torch", "safetensors")) -> Iterator[None]:
    """Check `needs` up front (before any work), and turn a ModuleNotFoundError of any train-extra module
    raised inside the block (a lazy import deeper down, e.g. matplotlib for pictures) into one line."""
    for module in needs:
        if not module_available(module):
            raise MissingBackendError(_message(command, module))
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in TRAIN_MODULES:
            raise
        raise MissingBackendError(_message(command, top)) from exc
