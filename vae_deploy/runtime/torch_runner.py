"""The `torch` backend: the PyTorch model from the folder's reference/ checkpoint, the parity reference.

torch and the model code are imported only when this runner is built, so the rest of the runtime stays
torch-free. Each graph calls the model method its spec names (`encode`, `decode`, or a video model's
`encode_step`/`decode_step`) with the same inputs and state the ONNX graph gets, in eval mode. It always
computes in fp32 and returns fp32, whatever the exported graphs' precision: it is the reference.
"""

from __future__ import annotations

import numpy as np

from vae_deploy.errors import MissingBackendError, ModelFormatError
from vae_deploy.runtime.manifest import require_reference
from vae_deploy.runtime.runner import Runner, module_available, named_inputs

# The adapter contract's whole-clip reference hooks (models/adapters/contract.py ReferenceHooks), by graph.
REFERENCE_HOOKS = {"encoder": "reference_encode", "decoder": "reference_decode"}


class TorchRunner(Runner):
    name = "torch"
    install_hint = "the PyTorch side (pip install 'vae-deploy[train]')"
    # entry_point: a --from factory the user named (verify --from); the folder alone never picks one
    OPTIONS = {"threads": int, "entry_point": str}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for module in ("torch", "safetensors"):
            if not module_available(module):
                return f"{module} is not installed"
        return None

    def _load(self) -> None:
        try:
            import torch

            from vae_deploy.models.checkpoint import load_model
        except Exception as exc:  # noqa: BLE001 - installed but broken (a missing .so, a half upgrade)
            raise MissingBackendError(f"backend 'torch' is installed but cannot be imported "
                                      f"({type(exc).__name__}: {exc}); reinstall it: {self.install_hint}"
                                      ) from exc

        self._torch = torch
        if "threads" in self.options:
            torch.set_num_threads(int(self.options["threads"]))
        reference = require_reference(self.model_dir, self.manifest)
        model, config = load_model(reference, entry_point=self.options.get("entry_point"))
        if config["kind"] != self.manifest.kind:
            raise ModelFormatError(f"{reference} holds a {config['kind']!r} model but the manifest says "
                                   f"{self.manifest.kind!r}")
        self.model = model.eval()
        self._methods = {}
        for name, spec in self.manifest.graphs.items():
            method = getattr(self.model, spec.method, None)
            if method is None:
                raise ModelFormatError(f"{self.manifest.kind!r} models have no method {spec.method!r}, which "
                                       f"the {name} graph names")
            self._methods[name] = method

    def full_sequence(self, graph: str, inputs) -> dict[str, np.ndarray]:
        """A model with its own whole-clip computation (an adapted diffusers model's `vae.encode(x)`,
        models/adapters/contract.py `ReferenceHooks`) is the reference for whole clips; the rest go the
        Runner's way (one step from the zero state, or the first rule then one step)."""
        hook = REFERENCE_HOOKS.get(graph, "")
        own = getattr(self.model, hook, None) if hook else None
        if own is None:
            return super().full_sequence(graph, inputs)
        torch = self._torch
        # Not spec.bind: a whole clip of a first-rule model (1 + 4k frames) is no whole steady chunk; the
        # model checks its own input layout.
        spec = self.graph(graph)
        arrays = named_inputs(spec, inputs)
        args = [torch.from_numpy(np.asarray(arrays[t.name], dtype=np.float32)) for t in spec.inputs]
        with torch.inference_mode():
            result = own(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        names = [t.name for t in spec.outputs]
        if len(result) != len(names):
            raise ModelFormatError(f"{self.manifest.kind}.{hook} returned {len(result)} tensors, "
                                   f"the {graph} graph has {len(names)} data outputs ({', '.join(names)})")
        return {n: t.numpy() for n, t in zip(names, result, strict=True)}

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        spec = self.graph(graph)
        args = [torch.from_numpy(np.asarray(feeds[n], dtype=np.float32)) for n in spec.input_names]
        with torch.inference_mode():
            result = self._methods[graph](*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        names = spec.output_names
        if len(result) != len(names):
            raise ModelFormatError(f"{self.manifest.kind}.{spec.method} returned {len(result)} tensors, the "
                                   f"{graph} graph has {len(names)} outputs ({', '.join(names)})")
        return {n: t.numpy() for n, t in zip(names, result, strict=True)}
