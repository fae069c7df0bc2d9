"""Runtime (no torch): the model folder format, one Runner contract, backends by name.

    from vae_deploy.runtime import load_runner
    with load_runner("models/mnist", "ort-cpu") as runner:
        mu, logvar = runner.encode(images)        # images float32 (N, 1, 28, 28) in [0, 1]
        recon = runner.decode(mu)

Importing this package imports numpy only; onnxruntime/torch load when a backend is used.
"""

from vae_deploy.runtime.manifest import Manifest, read_manifest
from vae_deploy.runtime.registry import available_backends, get_backend, load_runner, register_backend
from vae_deploy.runtime.runner import Runner, Stream
from vae_deploy.runtime.spec import GraphSpec, StateSpec, TensorSpec, Tolerance

__all__ = [
    "GraphSpec", "Manifest", "Runner", "StateSpec", "Stream", "TensorSpec", "Tolerance", "available_backends",
    "get_backend", "load_runner", "read_manifest", "register_backend",
]
