"""Export (torch side): graph specs per model kind, ONNX export, profiles, parity validation.

    from vae_deploy.export import export_model, load_profile
    manifest, report = export_model("runs/mnist", "models/mnist", load_profile("export/cpu-fp32.toml"))
"""

from vae_deploy.export.onnx_export import export_model
from vae_deploy.export.profile import ExportProfile, load_profile
from vae_deploy.export.specs import graph_specs, register_spec
from vae_deploy.export.validate import ParityReport, check_parity

__all__ = ["ExportProfile", "ParityReport", "check_parity", "export_model", "graph_specs", "load_profile",
           "register_spec"]
