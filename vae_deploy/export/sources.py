"""What `vae-deploy export` takes: a vae-deploy run (or checkpoint) folder, a local diffusers model folder
(or a pipeline folder holding one in vae/), `--from package.module:factory`, or a vae-deploy model folder
to re-profile (its reference/ module, and its fp32 graphs instead of tracing: export/reprofile.py); each
becomes a ModelSource.

A ModelSource holds the PyTorch model, ready to trace, and the checkpoint config the model folder's
reference/ records; `write_reference` writes that reference (a run's checkpoint files are copied as they
are; an adapted model is saved through models/checkpoint.py, so the torch runner loads every reference the
same way).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vae_deploy.errors import ConfigError, DataError
from vae_deploy.export.reprofile import FolderGraphs, is_model_folder, open_model_folder
from vae_deploy.files import atomic_path
from vae_deploy.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    save_model,
)


@dataclass
class ModelSource:
    module: nn.Module  # the PyTorch model, in eval mode
    config: dict[str, Any]  # the checkpoint config: kind, model (its config as a dict), extras (recipe)
    description: str  # what it was loaded from, for log lines
    checkpoint_dir: Path | None = None  # a vae-deploy checkpoint folder, copied into reference/ as it is
    graphs: FolderGraphs | None = None  # a model folder's fp32 graphs, taken instead of tracing the module

    @property
    def kind(self) -> str:
        return self.config["kind"]

    def write_reference(self, folder: Path) -> list[str]:
        """Write the PyTorch reference into `folder`; returns the file names written."""
        if self.checkpoint_dir is not None:
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                with atomic_path(folder / name) as tmp:
                    shutil.copyfile(self.checkpoint_dir / name, tmp)
        else:
            save_model(folder, self.module, extra={"source": self.description})
        return [WEIGHTS_FILE, CONFIG_FILE]


def open_model_source(source: Path | None, entry_point: str | None = None) -> ModelSource:
    """The model `export` was pointed at (module docstring); one error line when it is none of them."""
    from vae_deploy.models.adapters import diffusers_folder, load_diffusers_folder, load_entry_point

    if source is not None and is_model_folder(source):
        # before the "not both" rule: a model exported with --from is rebuilt only by the factory named again
        return open_model_folder(Path(source), entry_point)
    if entry_point is not None:
        if source is not None:
            raise ConfigError("give either a SOURCE folder or --from package.module:factory, not both")
        model = load_entry_point(entry_point)
        return _adapted(model, f"--from {entry_point}")
    if source is None:
        raise ConfigError("give the model to export: a run folder, a diffusers model folder, or --from "
                          "package.module:factory")
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source} does not exist")
    if not source.is_dir():
        raise DataError(f"{source} is not a folder: give a run folder, a diffusers model folder (config.json "
                        f"+ weights), or --from package.module:factory")
    folder = diffusers_folder(source)
    if folder is not None:
        return _adapted(load_diffusers_folder(folder), f"diffusers folder {folder}")
    if not (source / CONFIG_FILE).is_file():
        raise DataError(f"{source} is neither a vae-deploy run folder ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a "
                        f"diffusers model folder (config.json with _class_name, or a pipeline's vae/)")
    model, config = load_model(source)
    return ModelSource(model.eval(), config, f"checkpoint {source}", checkpoint_dir=source)


def _adapted(model: nn.Module, description: str) -> ModelSource:
    from vae_deploy.config_io import to_dict

    config = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": model.kind,
              "model": to_dict(model.config)}
    return ModelSource(model.eval(), config, description)
