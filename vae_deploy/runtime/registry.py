"""Backends by name, imported lazily: "module:Class" strings, so listing or choosing a backend never
imports onnxruntime, TensorRT or torch until that backend is used (Polygraphy's lazy imports).

Every backend is one `register_backend` line at the end of this module; DEFAULT_BACKEND is the one the
commands use unless told otherwise.
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
    install_hint: str  # what to install when it is missing
    description: str = ""


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, target: str, install_hint: str, description: str = "") -> None:
    BACKENDS[name] = Backend(name, target, install_hint, description)


def _import(backend: Backend) -> type[Runner]:
    module_name, _, class_name = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingBackendError(_missing(backend, str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - a broken install fails any way (OSError for a missing .so, ...)
        raise MissingBackendError(_missing(backend, f"its import failed ({type(exc).__name__}: {exc})")
                                  ) from None
    return getattr(module, class_name)


def _missing(backend: Backend, reason: str) -> str:
    others = [n for n in available_backends() if n != backend.name]
    return (f"backend {backend.name!r} is not available: {reason}; install {backend.install_hint} "
            f"(available here: {', '.join(others) or 'none'})")


def get_backend(name: str) -> type[Runner]:
    """The runner class for `name`; MissingBackendError says what to install and what is available."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise MissingBackendError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)}; available here: "
                                  f"{', '.join(available_backends()) or 'none'})")
    cls = _import(backend)
    try:
        reason = cls.unavailable_reason()
    except Exception as exc:  # noqa: BLE001 - probing a broken library (e.g. torch importing lazily here)
        reason = f"probing it failed ({type(exc).__name__}: {exc})"
    if reason:
        raise MissingBackendError(_missing(backend, reason))
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
                 "onnxruntime (pip install onnxruntime)", "ONNX Runtime, CPU execution provider")
register_backend("ort-cuda", "vae_deploy.runtime.ort_cuda:OrtCudaRunner",
                 "onnxruntime-gpu with a CUDA device (pip install onnxruntime-gpu)",
                 "ONNX Runtime, CUDA execution provider")
register_backend("torch", "vae_deploy.runtime.torch_runner:TorchRunner",
                 "the PyTorch side (pip install 'vae-deploy[train]')",
                 "the PyTorch model from the folder's reference/ checkpoint: the parity reference")
register_backend("torch-cuda", "vae_deploy.runtime.torch_cuda_runner:TorchCudaRunner",
                 "PyTorch with CUDA and an NVIDIA GPU (pip install 'vae-deploy[train]' with a CUDA torch)",
                 "the PyTorch model on the GPU, eager or torch.compile'd (the verified GPU fast path)")
register_backend("tensorrt", "vae_deploy.runtime.tensorrt_runner:TensorRTRunner",
                 "TensorRT 10.x or 11.x and an NVIDIA GPU (pip install 'tensorrt>=10,<12'; engines from "
                 "`vae-deploy export --engine`)",
                 "TensorRT engines from the model folder's engines/ cache (unverified in this project's CI)")
