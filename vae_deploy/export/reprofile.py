"""Re-profiling: `vae-deploy export MODEL_DIR --profile P --out NEW` takes the graphs of an fp32 model folder
instead of tracing the model again.

Why: tracing is most of an export's cost (a Wan VAE at 480p: ten minutes in torch.onnx.export), and every
other profile starts from the same fp32 graphs: fp16 conversion and int8 quantization run on them after
they exist (export/onnx_export.py steps 2-7). Optimum and Polygraphy likewise convert an existing ONNX
export without going back to PyTorch.

What is taken from MODEL_DIR, and on which conditions (each refused in one line, before anything is written):
- the PyTorch module and its config from reference/ (models/checkpoint.py load_model, as the torch reference
  runner loads it): the parity check needs it, so a slim folder (no reference/) is refused. A folder names
  no code to import: a --from model is rebuilt only when the user names its factory again (--from).
- the graphs, only from an fp32 folder (fp16/int8 graphs are not what the other profiles start from), at
  the profile's opset, and only when the graph specs computed now from the module equal the folder's (a
  graph answers to its spec; a changed model or vae-deploy would otherwise ship a graph under a contract it
  was not exported for). Each file is checked against the folder's manifest (sha256) when the folder is
  opened and again right before it is read; graphs keeping their weights in a shared weights.bin are loaded
  with it and written self-contained, so the rest of the export runs exactly as after tracing.
The folder is only read; --out must lie outside it (export/publish.py check_apart).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from vae_deploy.errors import ConfigError, ModelFormatError
from vae_deploy.files import atomic_path, sha256_file
from vae_deploy.runtime.manifest import (
    MANIFEST_FILE,
    REFERENCE_DIR,
    Manifest,
    external_data_files,
    has_reference,
    read_manifest,
)
from vae_deploy.runtime.spec import GraphSpec


def is_model_folder(path: Path) -> bool:
    """Whether `path` is a vae-deploy model folder (what export writes), as opposed to a run or diffusers
    folder: it has a manifest.json."""
    return (Path(path) / MANIFEST_FILE).is_file()


@dataclass(frozen=True)
class FolderGraphs:
    """The graphs of the fp32 model folder `folder`, as its manifest (whose file sha256 is `manifest_sha256`)
    vouches for them."""

    folder: Path
    manifest: Manifest
    manifest_sha256: str

    def record(self) -> dict[str, str]:
        """Where the graphs came from, for the new manifest's export_profile."""
        return {"folder": str(self.folder), "manifest_sha256": self.manifest_sha256,
                "fingerprint": self.manifest.fingerprint}

    def check_reuse(self, specs: dict[str, GraphSpec], opset: int) -> None:
        """Refuse to reuse the graphs for an export at `opset` whose specs (computed now from the module, in
        float32 I/O) are `specs`, unless they are what the folder's graphs were exported for."""
        if self.manifest.opset != opset:
            raise ConfigError(f"{self.folder} holds opset {self.manifest.opset} graphs and the profile asks "
                              f"for opset {opset}: re-profiling keeps the graphs, so use a profile with "
                              f"opset {self.manifest.opset}, or export from the run or diffusers folder")
        mine = {name: replace(spec, exporter="") for name, spec in specs.items()}
        theirs = {name: replace(spec, exporter="") for name, spec in self.manifest.graphs.items()}
        if mine != theirs:
            differ = sorted(n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n))
            raise ModelFormatError(f"{self.folder}: the {', '.join(differ)} graph specs computed now from "
                                   f"its reference differ from its manifest's (exported by another "
                                   f"vae-deploy version?): export from the run or diffusers folder instead")

    def take(self, spec: GraphSpec, path: Path) -> GraphSpec:
        """Write the folder's graph for `spec` to `path`, every tensor inline (its shared weights.bin read
        in), after checking its files against the manifest; returns `spec` with the folder's exporter."""
        theirs = self.manifest.graph(spec.name)
        # checked again here, not only when the folder was opened: it may have changed since (the graph
        # first: the names of its external data files come from it)
        self._check(theirs.file)
        for name in external_data_files(self.folder, theirs.file):
            self._check(name)
        model = onnx.load(str(self.folder / theirs.file), load_external_data=True)
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        return replace(spec, exporter=theirs.exporter)

    def _check(self, name: str) -> None:
        digest = self.manifest.files.get(name)
        if digest is None or sha256_file(self.folder / name) != digest:
            raise ModelFormatError(f"{self.folder / name} does not match {self.folder / MANIFEST_FILE}: the "
                                   f"file was modified after export; re-export the model")


def open_model_folder(folder: Path, entry_point: str | None = None):
    """The ModelSource of the model folder `folder`: its reference/ module and config, and its graphs
    (FolderGraphs). `entry_point`: the --from factory the user names for a model exported with --from."""
    from vae_deploy.export.sources import ModelSource
    from vae_deploy.models.checkpoint import load_model

    folder = Path(folder)
    manifest = read_manifest(folder)  # every file's sha256 checked: a tampered folder is refused here
    if not has_reference(manifest):
        raise ModelFormatError(f"{folder} has no PyTorch reference (reference/: a folder `vae-deploy slim` "
                               f"wrote), which re-profiling needs for the parity check: use the folder "
                               f"export wrote")
    if manifest.precision != "fp32":
        raise ConfigError(f"{folder} holds {manifest.precision} graphs: re-export from an fp32 folder")
    model, config = load_model(folder / REFERENCE_DIR, entry_point=entry_point)
    if config["kind"] != manifest.kind:
        raise ModelFormatError(f"{folder / REFERENCE_DIR} holds a {config['kind']!r} model but the manifest "
                               f"says {manifest.kind!r}")
    digest = sha256_file(folder / MANIFEST_FILE)
    return ModelSource(model.eval(), config, f"model folder {folder}", checkpoint_dir=folder / REFERENCE_DIR,
                       graphs=FolderGraphs(folder, manifest, digest))
