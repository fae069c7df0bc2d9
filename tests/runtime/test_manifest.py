"""The model folder's manifest: written by export, checked on every load (schema, files, hashes)."""

import json
import shutil

import pytest

from vae_deploy.errors import ModelFormatError
from vae_deploy.files import sha256_file
from vae_deploy.runtime import load_runner, read_manifest
from vae_deploy.runtime.manifest import SCHEMA_VERSION, manifest_from_json, write_manifest


@pytest.fixture
def model_copy(mlp_model_dir, tmp_path):
    return shutil.copytree(mlp_model_dir, tmp_path / "model")


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_manifest_records_the_contract(mlp_model_dir):
    m = read_manifest(mlp_model_dir)
    assert m.schema_version == SCHEMA_VERSION and m.kind == "mlp" and m.precision == "fp32" and m.opset == 18
    assert m.model["latent_dim"] == 2
    assert set(m.files) == {"encoder.onnx", "decoder.onnx", "golden.npz", "reference/model.safetensors",
                            "reference/config.json"}
    for name, digest in m.files.items():
        assert sha256_file(mlp_model_dir / name) == digest
    assert set(m.producer) >= {"torch", "onnx", "onnxruntime", "vae_deploy"}
    assert m.preprocessing == {"input": "images", "layout": "NCHW", "dtype": "float32",
                               "value_range": [0.0, 1.0], "image_shape": [1, 28, 28]}
    enc = m.graph("encoder")
    assert [t.name for t in enc.inputs] == ["images"] and enc.inputs[0].shape == ("batch", 1, 28, 28)
    assert [(t.name, t.shape) for t in enc.outputs] == [("mu", ("batch", 2)), ("logvar", ("batch", 2))]
    assert m.graph("decoder").state == []
    raw = json.loads((mlp_model_dir / "manifest.json").read_text())
    assert raw["graphs"]["encoder"]["inputs"][0]["dynamic_axes"] == {"0": "batch"}
    assert raw["parity"]["passed"] is True and raw["parity"]["backend"] == "ort-cpu"
    assert m.export_profile["name"] == "cpu-fp32"


def test_manifest_round_trips(mlp_model_dir, tmp_path):
    m = read_manifest(mlp_model_dir)
    write_manifest(tmp_path, m)
    again = read_manifest(tmp_path, check_files=False)
    assert again == m
    assert again.fingerprint == m.fingerprint


def test_tampered_file_is_refused(model_copy):
    data = bytearray((model_copy / "decoder.onnx").read_bytes())
    data[-1] ^= 0xFF
    (model_copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"decoder.onnx does not match the manifest .*re-export"):
        load_runner(model_copy, "ort-cpu")


def test_swapped_graph_files_are_refused(model_copy):
    enc, dec = model_copy / "encoder.onnx", model_copy / "decoder.onnx"
    enc_bytes = enc.read_bytes()
    enc.write_bytes(dec.read_bytes())
    dec.write_bytes(enc_bytes)
    with pytest.raises(ModelFormatError, match="does not match the manifest"):
        read_manifest(model_copy)


def test_tampered_reference_weights_are_refused(model_copy):
    path = model_copy / "reference" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="model.safetensors does not match"):
        load_runner(model_copy, "torch")


def test_wrong_schema_version_is_refused(model_copy):
    _edit_manifest(model_copy, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ModelFormatError, match=f"schema version {SCHEMA_VERSION + 1}, this vae-deploy reads"):
        load_runner(model_copy, "ort-cpu")


def test_missing_file_is_refused(model_copy):
    (model_copy / "encoder.onnx").unlink()
    with pytest.raises(ModelFormatError, match="missing encoder.onnx"):
        load_runner(model_copy, "ort-cpu")


def test_missing_manifest_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="manifest.json is missing"):
        read_manifest(tmp_path / "empty")
    with pytest.raises(ModelFormatError, match="model folder not found"):
        read_manifest(tmp_path / "nowhere")


def test_unlisted_graph_and_escaping_paths_are_refused(model_copy):
    _edit_manifest(model_copy, lambda d: d["files"].pop("decoder.onnx"))
    with pytest.raises(ModelFormatError, match="does not vouch for the decoder graph"):
        read_manifest(model_copy)
    escape = {"decoder.onnx": "0" * 64, "../outside": "0" * 64}
    _edit_manifest(model_copy, lambda d: d["files"].update(escape))
    with pytest.raises(ModelFormatError, match="outside the model folder"):
        read_manifest(model_copy)


@pytest.mark.parametrize("damage", ["not-json", "not-manifest", "bad-shape", "unknown-key"])
def test_malformed_manifests_are_refused(model_copy, damage):
    path = model_copy / "manifest.json"
    if damage == "not-json":
        path.write_text("{")
    elif damage == "not-manifest":
        path.write_text("[1, 2]")
    elif damage == "bad-shape":
        _edit_manifest(model_copy,
                       lambda d: d["graphs"]["encoder"]["inputs"][0].update(shape=["batch", "x**2"]))
    else:
        _edit_manifest(model_copy, lambda d: d["graphs"]["decoder"].update(surprise=1))
    with pytest.raises(ModelFormatError):
        read_manifest(model_copy)


def test_dynamic_axes_must_agree_with_the_shape(model_copy):
    _edit_manifest(model_copy,
                   lambda d: d["graphs"]["encoder"]["inputs"][0].update(dynamic_axes={"1": "batch"}))
    with pytest.raises(ModelFormatError, match="dynamic_axes"):
        manifest_from_json(json.loads((model_copy / "manifest.json").read_text()))


def test_the_fingerprint_is_the_documented_hash_of_the_files_hashes(mlp_model_dir):
    """model_fingerprint as Manifest.fingerprint documents it, recomputed from the files themselves:
    sha256 of the sorted "path:sha256" lines joined by newlines; not the sha256 of any one file."""
    import hashlib

    m = read_manifest(mlp_model_dir)
    lines = [f"{name}:{hashlib.sha256((mlp_model_dir / name).read_bytes()).hexdigest()}"
             for name in sorted(m.files)]
    assert m.fingerprint == hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    every_file = {hashlib.sha256(p.read_bytes()).hexdigest() for p in mlp_model_dir.rglob("*") if p.is_file()}
    assert m.fingerprint not in every_file
