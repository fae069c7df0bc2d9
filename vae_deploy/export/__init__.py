"""Export (torch side): graph specs per model kind, ONNX export, profiles, parity validation, and the
`export` and `verify` commands as functions (jobs.py).

    from vae_deploy.export import export_model, load_profile
    manifest, report = export_model("runs/mnist", "models/mnist", load_profile("export/cpu-fp32.toml"))

The names below are imported on first use (PEP 562), so that importing a torch-free submodule
(validate, golden, publish, profile, specs, real_inputs, jobs) on an edge install never imports onnx_export
and with it torch.
"""

from __future__ import annotations

from vae_deploy.lazy_names import lazy_getattr

_EXPORTS = {
    "export_model": "vae_deploy.export.onnx_export",
    "ExportProfile": "vae_deploy.export.profile",
    "load_profile": "vae_deploy.export.profile",
    "graph_specs": "vae_deploy.export.specs",
    "register_spec": "vae_deploy.export.specs",
    "ParityReport": "vae_deploy.export.validate",
    "check_parity": "vae_deploy.export.validate",
    "real_inputs_for": "vae_deploy.export.real_inputs",
    "export_job": "vae_deploy.export.jobs",
    "verify_job": "vae_deploy.export.jobs",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
