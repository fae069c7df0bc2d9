"""The model folder format: manifest.json + encoder.onnx + decoder.onnx + reference/ + golden.npz, and an
engines/ cache of TensorRT engines where they were built (runtime/engine_cache.py; not in the manifest:
each engine is keyed by the graph it was built from).

Export writes it, the runtime reads it; no torch here. manifest.json (schema_version 1):

    format, schema_version    "vae-deploy-model", 1
    kind, model               model kind (models/registry.py) and its config
    graphs                    per graph: file, method, inputs/outputs (name, shape with symbolic dims as
                              strings, dtype, layout, value_range, dynamic_axes), state (past/present names,
                              shape, initial "zeros"), tolerance, example_dims, stream_axis, stream_chunks,
                              exporter ("dynamo" | "torchscript": the torch.onnx exporter that wrote the
                              graph; absent in folders exported before it was recorded, read as "")
    preprocessing             layout, value range, image shape, dtype of the encoder's input
    precision, opset          "fp32" | "fp16" | "int8", ONNX opset
    producer                  versions of torch, onnx, onnxruntime, vae_deploy at export time
    files                     relative path -> sha256, for every file of the folder the manifest vouches for
                              (a graph's external data, e.g. weights.bin, included)
    removed_files             relative path -> sha256 of files the export wrote that `vae-deploy slim` left
                              out (reference/); absent when none. Part of the fingerprint, so a slim folder
                              keeps its model's identity: latents encoded with one decode with the other
    export_profile            the profile the graphs were exported with
    parity                    the parity report measured at export time (export/validate.py)
    cpu_requirements          what the graphs need of the CPU for their parity (int8: runtime/cpu_features.py;
                              {} for nothing special); checked when ort-cpu loads the folder
    tiling                    per video graph: how it may be split into spatial tiles (exact with a halo,
                              blended, or none, and why), measured at export (runtime/tiling.py); absent in
                              folders exported before it was recorded, read as "none"

Loading checks the schema version and every listed file's hash, so a tampered, truncated or swapped file
is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vae_deploy.config_io import from_dict, to_dict
from vae_deploy.errors import ConfigError, ModelFormatError
from vae_deploy.files import sha256_file, write_json_atomic
from vae_deploy.runtime.spec import GraphSpec

FORMAT = "vae-deploy-model"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
REFERENCE_DIR = "reference"  # checkpoint copy (model.safetensors + config.json) for the torch reference


@dataclass
class Manifest:
    kind: str
    model: dict[str, Any]
    graphs: dict[str, GraphSpec]
    precision: str = "fp32"  # "fp32" | "fp16" | "int8" (weights and compute; I/O dtypes: the tensor specs)
    opset: int = 17
    preprocessing: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative posix path -> sha256
    export_profile: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    cpu_requirements: dict[str, Any] = field(default_factory=dict)  # runtime/cpu_features.py
    removed_files: dict[str, str] = field(default_factory=dict)  # left out by `slim`: path -> sha256
    tiling: dict[str, Any] = field(default_factory=dict)  # graph -> tiling record (runtime/tiling.py)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT

    @property
    def part_graphs(self) -> set[str]:
        """The graphs that are parts of another (GraphSpec.parts, their first-chunk graphs included): only
        a tiled stream runs them, so runners load them when first used."""
        return {part for graph in self.graphs.values() for part in graph.parts}

    def graph(self, name: str) -> GraphSpec:
        try:
            return self.graphs[name]
        except KeyError:
            raise ModelFormatError(f"the model has no {name!r} graph (has: {', '.join(self.graphs)})"
                                   ) from None

    @property
    def fingerprint(self) -> str:
        """The model's identity, as latent files and run metrics record it (`model_fingerprint`).

        A hash of hashes, not the sha256 of any one file: sha256 of the UTF-8 text made of one
        "relative/posix/path:sha256-hex" line per entry of `files` (the folder's files the manifest vouches
        for) and of `removed_files` (what `vae-deploy slim` left out, so a slim folder is the same model),
        sorted by path and joined by newlines, no trailing newline. It ignores the
        parity report and the formatting of manifest.json, so re-measuring parity keeps it. In a model
        folder, with the actual file hashes (so a changed file shows):

            jq -r '.files | keys[]' manifest.json | LC_ALL=C sort |
                while read -r f; do echo "$f:$(sha256sum "$f" | cut -c1-64)"; done | head -c -1 | sha256sum
        """
        entries = {**self.removed_files, **self.files}
        text = "\n".join(f"{name}:{digest}" for name, digest in sorted(entries.items()))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "schema_version": self.schema_version,
            "kind": self.kind,
            "model": self.model,
            "precision": self.precision,
            "opset": self.opset,
            "preprocessing": self.preprocessing,
            "graphs": {name: _graph_to_json(g) for name, g in self.graphs.items()},
            "producer": self.producer,
            "files": self.files,
            "export_profile": self.export_profile,
            "parity": self.parity,
            "cpu_requirements": self.cpu_requirements,
            # only in slim folders: a full folder's manifest stays readable by older versions
            **({"removed_files": self.removed_files} if self.removed_files else {}),
            **({"tiling": self.tiling} if self.tiling else {}),  # absent for image models, like older folders
        }


def _graph_to_json(graph: GraphSpec) -> dict[str, Any]:
    data = {"file": graph.file, **to_dict(graph)}
    data.pop("name")
    for key, specs in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        for entry, spec in zip(data[key], specs, strict=True):
            # Redundant with the shape, but what an ONNX reader looks for; checked on load.
            entry["dynamic_axes"] = {str(axis): name for axis, name in spec.dynamic_axes.items()}
    return data


def _graph_from_json(name: str, data: dict[str, Any], where: str) -> GraphSpec:
    data = dict(data)
    file = data.pop("file", None)
    axes = {}
    for key in ("inputs", "outputs"):
        entries = []
        for entry in data.get(key, []):
            entry = dict(entry)
            axes[(key, entry.get("name"))] = entry.pop("dynamic_axes", None)
            entries.append(entry)
        data[key] = entries
    graph = from_dict(GraphSpec, {"name": name, **data}, where=where)
    if file != graph.file:
        raise ModelFormatError(f"{where}: file is {file!r}, expected {graph.file!r}")
    for spec in graph.inputs + graph.outputs:
        key = ("inputs" if spec in graph.inputs else "outputs", spec.name)
        derived = {str(a): n for a, n in spec.dynamic_axes.items()}
        if axes.get(key) is not None and axes[key] != derived:
            raise ModelFormatError(f"{where}: {spec.name} lists dynamic_axes {axes[key]} but its shape "
                                   f"{list(spec.shape)} implies {derived}")
    return graph


def manifest_from_json(data: Any, where: str = MANIFEST_FILE) -> Manifest:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFormatError(f"{where} is not a vae-deploy model manifest")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFormatError(f"{where} has schema_version {version!r}, which is not an integer")
    if version != SCHEMA_VERSION:
        raise ModelFormatError(f"{where} has schema version {version}, this vae-deploy reads version "
                               f"{SCHEMA_VERSION}: re-export the model with this version")
    data = dict(data)
    graphs_raw = data.pop("graphs", None)
    if not isinstance(graphs_raw, dict) or not graphs_raw:
        raise ModelFormatError(f"{where} lists no graphs")
    try:
        graphs = {name: _graph_from_json(name, g, f"{where}: graphs.{name}")
                  for name, g in graphs_raw.items()}
        manifest = from_dict(Manifest, {**data, "graphs": {}}, where=where)
    except ConfigError as exc:
        raise ModelFormatError(f"{where} is malformed: {exc}") from None
    manifest.graphs = graphs
    return manifest


def is_reference_file(name: str) -> bool:
    """Whether a listed file belongs to the PyTorch reference (reference/), which only the torch backends
    read and `vae-deploy slim` leaves out."""
    return PurePosixPath(name).parts[:1] == (REFERENCE_DIR,)


def has_reference(manifest: Manifest) -> bool:
    """Whether the folder carries its PyTorch reference (a slim folder does not)."""
    return any(is_reference_file(name) for name in manifest.files)


def require_reference(folder: Path, manifest: Manifest) -> Path:
    """The folder's reference/ for the torch backends, or one line saying a slim folder has none."""
    if not has_reference(manifest):
        raise ModelFormatError(f"{folder} has no PyTorch reference (reference/: a folder `vae-deploy slim` "
                               f"wrote for a device): use an ONNX backend, or the folder export wrote")
    return Path(folder) / REFERENCE_DIR


def _safe_member(folder: Path, name: str) -> Path:
    """A manifest's file name must stay inside the model folder."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ModelFormatError(f"manifest lists a file outside the model folder: {name!r}")
    return folder.joinpath(*rel.parts)


def external_data_files(folder: Path, graph_file: str) -> list[str]:
    """The files (relative posix paths in the model folder) that the ONNX graph `graph_file` reads
    tensors from (ONNX external data, which large graphs need): onnxruntime opens them beside the graph,
    so the manifest must vouch for them like for the graph itself."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = _safe_member(Path(folder), graph_file)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: a broken graph file
        raise ModelFormatError(f"{path} is not a readable ONNX graph ({type(exc).__name__}: {exc})") from None

    def tensors(graph):
        yield from graph.initializer
        yield from (sparse.values for sparse in graph.sparse_initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from tensors(sub)

    names = set()
    for tensor in tensors(model.graph):
        if uses_external_data(tensor):
            location = PurePosixPath(PurePosixPath(graph_file).parent, ExternalDataInfo(tensor).location)
            _safe_member(Path(folder), str(location))  # refuses a path out of the folder
            names.add(str(location))
    return sorted(names)


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Every listed file exists and has its recorded sha256; every graph file is listed, and so is every
    file a graph reads its tensors from (ONNX external data)."""
    folder = Path(folder)
    # Every name first, so nothing outside the folder is ever opened.
    paths = {name: _safe_member(folder, name) for name in manifest.files}
    for name, graph in manifest.graphs.items():
        if graph.file not in manifest.files:
            raise ModelFormatError(f"{folder / MANIFEST_FILE} does not vouch for the {name} graph "
                                   f"({graph.file} has no sha256)")
    for name, digest in manifest.files.items():
        path = paths[name]
        if not path.is_file():
            raise ModelFormatError(f"model folder {folder} is missing {name}, which its manifest lists")
        actual = sha256_file(path)
        if actual != digest:
            raise ModelFormatError(f"{path} does not match the manifest (sha256 {actual[:12]}..., expected "
                                   f"{digest[:12]}...): the file was modified or replaced after export; "
                                   f"re-export the model")
    for graph in manifest.graphs.values():  # the graph files are hash-checked by now
        unlisted = [name for name in external_data_files(folder, graph.file) if name not in manifest.files]
        if unlisted:
            raise ModelFormatError(f"{folder / graph.file} reads tensors from {', '.join(unlisted)}, which "
                                   f"{MANIFEST_FILE} does not vouch for (no sha256): re-export the model")


def read_manifest(folder: Path, check_files: bool = True) -> Manifest:
    """Read and validate `folder/manifest.json`; with check_files, also every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ModelFormatError(f"model folder not found: {folder}")
    if not path.is_file():
        raise ModelFormatError(f"{folder} is not a model folder: {MANIFEST_FILE} is missing "
                               f"(make one with `vae-deploy export CKPT_DIR --out {folder}`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from None
    manifest = manifest_from_json(data, str(path))
    if check_files:
        verify_files(folder, manifest)
    return manifest


_WARNED: set[str] = set()  # folders warned about in this process


def warn_failed_parity(folder: Path, manifest: Manifest) -> None:
    """One `warning:` line on stderr (once per folder and process) when the folder's manifest records a
    failed parity check: export still writes such a folder so that `verify` can show the details, and a
    command that streams through it should not pass its possibly wrong outputs off as fine."""
    if manifest.parity.get("passed", True) is not False or str(folder) in _WARNED:
        return
    _WARNED.add(str(folder))
    print(f"warning: {folder} failed its parity check at export, so its outputs may be wrong "
          f"(`vae-deploy verify {folder}` shows where)", file=sys.stderr)


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    folder = Path(folder)
    return {name: sha256_file(_safe_member(folder, name)) for name in sorted(names)}


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (last, after the files it vouches for)."""
    path = Path(folder) / MANIFEST_FILE
    write_json_atomic(path, json_safe(manifest.to_json()))
    return path


def json_safe(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings (a PSNR of identical outputs is +inf)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
