"""Re-profiling (export/reprofile.py): `vae-deploy export MODEL_DIR --profile P --out NEW` takes an fp32 model
folder's graphs and reference/ instead of tracing the model again, and refuses in one line, writing nothing,
a folder it cannot re-profile. The fp16 and int8 paths through it are tested where those profiles are
(test_external_fp16.py: the zoo's AutoencoderKL and Wan 2.1 exports, the latter with shared weights;
test_quantize.py)."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from cli_support import assert_one_line_error, invoke_main

from vae_deploy.export.slim import slim_folder


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fp32_to_fp32_reuses_the_graphs_as_they_are_and_verifies(mlp_model_dir, tmp_path, monkeypatch,
                                                                  capsys):
    before = _files(mlp_model_dir)
    out = tmp_path / "again"
    result = invoke_main(monkeypatch, capsys, "export", mlp_model_dir, "--profile", "cpu-fp32", "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"reusing encoder from {mlp_model_dir} (no tracing)" in result.stdout
    assert f"reusing decoder from {mlp_model_dir} (no tracing)" in result.stdout
    assert "exporting encoder" not in result.stdout
    source, new = (json.loads((folder / "manifest.json").read_text()) for folder in (mlp_model_dir, out))
    for graph in source["graphs"].values():  # the same ONNX files, byte for byte, the exporter record kept
        assert (out / graph["file"]).read_bytes() == (mlp_model_dir / graph["file"]).read_bytes()
    assert new["graphs"] == source["graphs"]
    assert new["export_profile"]["reprofiled_from"] == {
        "folder": str(mlp_model_dir), "fingerprint": new["export_profile"]["reprofiled_from"]["fingerprint"],
        "manifest_sha256": hashlib.sha256((mlp_model_dir / "manifest.json").read_bytes()).hexdigest()}
    assert new["files"]["reference/model.safetensors"] == source["files"]["reference/model.safetensors"]
    assert new["parity"]["passed"]
    verified = invoke_main(monkeypatch, capsys, "verify", out, "--backend", "ort-cpu", "--real", "100")
    assert verified.returncode == 0, verified.stderr
    assert _files(mlp_model_dir) == before  # the source is only read


def _tampered_in_place(graph: Path) -> None:
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, in the middle of the file: the weights
    graph.write_bytes(bytes(data))


def _tampered(model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "tampered"
    shutil.copytree(model, folder)
    _tampered_in_place(folder / "decoder.onnx")
    return folder


def _slim(model: Path, tmp_path: Path) -> Path:
    slim_folder(model, tmp_path / "slim")  # the folder for a device: no reference/
    return tmp_path / "slim"


def _other_spec(model: Path, tmp_path: Path) -> Path:
    """A copy whose manifest promises another tolerance than vae-deploy computes for the model: its graphs
    were not exported for the spec a new export would write."""
    folder = tmp_path / "other_spec"
    shutil.copytree(model, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["decoder"]["tolerance"]["max_abs"] = 0.5
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _opset_17(tmp_path: Path) -> str:
    profile = tmp_path / "opset17.toml"
    profile.write_text('name = "opset17"\nprecision = "fp32"\nopset = 17\n')
    return str(profile)


# (case id, source, extra args, fragment of the one error line); sources: "fp32" (the MLP folder), "fp16"
# (its gpu-fp16 export), "slim", "tampered", "other_spec"; "{src}" in the args is the source itself.
REFUSALS = [
    ("slim folder", "slim", [], "has no PyTorch reference (reference/: a folder `vae-deploy slim` wrote), "
                                "which re-profiling needs for the parity check"),
    ("fp16 source", "fp16", [], "holds fp16 graphs: re-export from an fp32 folder"),
    ("tampered graph", "tampered", [], "decoder.onnx does not match the manifest"),
    ("out is the source", "fp32", ["--out", "{src}", "--force"], "is the model folder: write the re-profiled "
                                                                 "folder somewhere else"),
    ("out inside the source", "fp32", ["--out", "{src}/fp16"], "is inside it"),
    ("another opset", "fp32", ["--profile", "opset17"],
     "holds opset 18 graphs and the profile asks for opset 17"),
    ("specs differ", "other_spec", [], "the decoder graph specs computed now from its reference differ"),
]


@pytest.mark.parametrize(("source", "args", "fragment"), [c[1:] for c in REFUSALS],
                         ids=[c[0] for c in REFUSALS])
def test_a_folder_that_cannot_be_re_profiled_is_refused_in_one_line(source, args, fragment, mlp_model_dir,
                                                                    request, tmp_path, monkeypatch, capsys):
    folder = {"fp32": lambda: mlp_model_dir,
              "fp16": lambda: request.getfixturevalue("mlp_model_fp16_dir"),
              "slim": lambda: _slim(mlp_model_dir, tmp_path),
              "tampered": lambda: _tampered(mlp_model_dir, tmp_path),
              "other_spec": lambda: _other_spec(mlp_model_dir, tmp_path)}[source]()
    args = [_opset_17(tmp_path) if a == "opset17" else a.format(src=folder) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    written = set(tmp_path.iterdir())
    before = _files(folder)
    result = invoke_main(monkeypatch, capsys, "export", folder, *args)
    assert_one_line_error(result, fragment, 2)
    assert "exporting" not in result.stdout and "reusing" not in result.stdout  # refused before any work
    assert set(tmp_path.iterdir()) == written  # nothing written: no folder, no temporary
    assert _files(folder) == before  # the source is untouched


def test_a_graph_modified_after_the_folder_was_opened_is_refused(mlp_model_dir, tmp_path):
    """Each graph is checked against the folder's manifest again right before it is read, not only when the
    folder is opened (a slow model's folder may change meanwhile)."""
    from vae_deploy.errors import ModelFormatError
    from vae_deploy.export import export_model
    from vae_deploy.export.sources import open_model_source

    folder = tmp_path / "model"
    shutil.copytree(mlp_model_dir, folder)
    source = open_model_source(folder)  # checks every file: the folder is intact here
    assert source.graphs is not None and source.checkpoint_dir == folder / "reference"
    _tampered_in_place(folder / "encoder.onnx")
    with pytest.raises(ModelFormatError, match=r"encoder\.onnx does not match .*manifest\.json: the file was "
                                               r"modified after export"):
        export_model(source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing written


def test_a_factory_the_folder_names_is_never_imported(mlp_model_dir, tmp_path, monkeypatch, capsys):
    """A model folder whose reference/ records a --from factory (a folder passing every integrity check) is
    not re-profiled unless the user names that factory: the module is importable here and never imported."""
    from vae_deploy.runtime.manifest import hash_files, read_manifest, write_manifest

    evil = tmp_path / "code"
    evil.mkdir()
    marker = tmp_path / "imported.txt"
    (evil / "evil_vae.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\ndef build(): pass\n")
    monkeypatch.syspath_prepend(str(evil))
    folder = shutil.copytree(mlp_model_dir, tmp_path / "named")
    config = json.loads((folder / "reference" / "config.json").read_text())
    config["kind"], config["model"] = "entry-point", {"entry_point": "evil_vae:build"}
    (folder / "reference" / "config.json").write_text(json.dumps(config))
    manifest = read_manifest(folder, check_files=False)
    manifest.kind, manifest.files = "entry-point", hash_files(folder, list(manifest.files))
    write_manifest(folder, manifest)
    read_manifest(folder)  # every file matches its manifest
    result = invoke_main(monkeypatch, capsys, "export", folder, "--out", tmp_path / "out")
    assert_one_line_error(result, "built by the factory it was exported with (--from evil_vae:build); "
                                  "vae-deploy imports it only when you name it", 2)
    assert not marker.exists() and "evil_vae" not in sys.modules
    assert not (tmp_path / "out").exists()
