"""Backends by name, imported lazily: "module:Class" strings, so listing or choosing a backend never
imports onnxruntime, TensorRT or torch until that backend is used (Polygraphy's lazy imports).

Every backend is one `register_backend` line at the end of this module; what else the package needs to know
about it (its options, install hint, whether it uses a GPU, its streaming thread default) its Runner class
declares (runtime/runner.py). Runner modules import their heavy library only when a runner is built, so
`runner_class` can read those declarations on any install. DEFAULT_BACKEND is the one the commands use
unless told otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_deploy.errors import MissingBackendError
from vae_deploy.runtime.manifest import warn_failed_parity
from vae_deploy.runtime.runner import Runner

DEFAULT_BACKEND = "ort-cpu"


@dataclass(frozen=True)
class Backend:
    name: str
    target: str  # "package.module:Class"
    description: str = ""


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, target: str, description: str = "") -> None:
    BACKENDS[name] = Backend(name, target, description)


def runner_class(name: str) -> type[Runner]:
    """The runner class registered as `name`, whether or not it can run here (what it declares: uses_gpu,
    OPTIONS, stream_threads, install_hint). An unknown name is a MissingBackendError listing the known."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise MissingBackendError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)}; available here: "
                                  f"{', '.join(available_backends()) or 'none'})")
    module_name, _, class_name = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - a broken install fails any way (OSError for a missing .so, ...)
        raise MissingBackendError(_missing(name, f"its module {module_name} failed to import "
                                                 f"({type(err).__name__}: {err}); reinstall vae-deploy")
                                  ) from err
    return getattr(module, class_name)


def _missing(name: str, reason: str, install_hint: str = "") -> str:
    others = [n for n in available_backends() if n != name]
    install = f"; install {install_hint}" if install_hint else ""
    return (f"backend {name!r} is not available: {reason}{install} "
            f"(available here: {', '.join(others) or 'none'})")


def get_backend(name: str) -> type[Runner]:
    """The runner class for `name`, usable here; MissingBackendError says what to install and what is
    available."""
    cls = runner_class(name)
    try:
        reason = cls.unavailable_reason()
    except Exception as err:  # noqa: BLE001 - probing a broken library (e.g. torch importing lazily here)
        reason = f"probing it failed ({type(err).__name__}: {err})"
    if reason:
        raise MissingBackendError(_missing(name, reason, cls.install_hint))
    return cls


def available_backends() -> list[str]:
    """Backends whose library (and device) is present here, without importing the heavy libraries."""
    names = []
    for backend in BACKENDS.values():
        module_name, _, class_name = backend.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            usable = cls.unavailable_reason() is None
        except Exception:  # noqa: BLE001 - missing or broken: not available either way
            continue
        if usable:
            names.append(backend.name)
    return names


def load_runner(model_dir: Path | str, backend: str = DEFAULT_BACKEND, **options: Any) -> Runner:
    """Open a model folder with the named backend (checks the manifest and file hashes first); a folder
    whose parity check failed at export opens with one warning line (runtime/manifest.py)."""
    runner = get_backend(backend)(model_dir, **options)
    warn_failed_parity(runner.model_dir, runner.manifest)
    return runner


register_backend("ort-cpu", "vae_deploy.runtime.ort_runner:OrtCpuRunner",
                 "ONNX Runtime, CPU execution provider")
register_backend("ort-cuda", "vae_deploy.runtime.ort_cuda:OrtCudaRunner",
                 "ONNX Runtime, CUDA execution provider")
register_backend("torch", "vae_deploy.runtime.torch_runner:TorchRunner",
                 "the PyTorch model from the folder's reference/ checkpoint: the parity reference")
register_backend("torch-cuda", "vae_deploy.runtime.torch_cuda_runner:TorchCudaRunner",
                 "the PyTorch model on the GPU, eager or torch.compile'd (the verified GPU fast path)")
register_backend("tensorrt", "vae_deploy.runtime.tensorrt_runner:TensorRTRunner",
                 "TensorRT engines from the model folder's engines/ cache (unverified in this project's CI)")
