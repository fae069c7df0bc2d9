"""Spec-driven ONNX export: names, dynamic axes, dtypes and opset in the files match the graph specs."""

import json
import shutil

import numpy as np
import onnx
import pytest

from vae_deploy.errors import ConfigError, DataError, InputShapeError, ModelFormatError
from vae_deploy.export import ExportProfile, export_model, graph_specs
from vae_deploy.export.onnx_export import check_graph
from vae_deploy.models import MLPVAEConfig
from vae_deploy.runtime import load_runner, read_manifest
from vae_deploy.runtime.spec import GraphSpec, TensorSpec


def _io(path):
    graph = onnx.load(str(path)).graph

    def describe(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    return describe(graph.input), describe(graph.output)


def test_graphs_follow_their_specs(mlp_model_dir):
    specs = graph_specs("mlp", MLPVAEConfig(latent_dim=2))
    for name, spec in specs.items():
        path = mlp_model_dir / f"{name}.onnx"
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        opsets = [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")]
        assert opsets == [("", 18)]
        inputs, outputs = _io(path)
        f32 = onnx.TensorProto.FLOAT
        assert inputs == [(t.name, f32, list(t.shape)) for t in spec.all_inputs]
        assert outputs == [(t.name, f32, list(t.shape)) for t in spec.all_outputs]
        check_graph(path, spec)  # checker + strict shape inference + spec comparison
    assert _io(mlp_model_dir / "encoder.onnx")[0] == [("images", 1, ["batch", 1, 28, 28])]
    assert _io(mlp_model_dir / "encoder.onnx")[1] == [("mu", 1, ["batch", 2]), ("logvar", 1, ["batch", 2])]


def test_check_graph_reports_spec_mismatches(mlp_model_dir):
    wrong_name = GraphSpec("decoder", inputs=[TensorSpec("latent", ("batch", 2))],
                           outputs=[TensorSpec("images", ("batch", 1, 28, 28))])
    with pytest.raises(ModelFormatError, match=r"inputs \['z'\].*spec says \['latent'\]"):
        check_graph(mlp_model_dir / "decoder.onnx", wrong_name)
    wrong_dim = GraphSpec("decoder", inputs=[TensorSpec("z", ("batch", 3))],
                          outputs=[TensorSpec("images", ("batch", 1, 28, 28))])
    with pytest.raises(ModelFormatError, match=r"z has dims \['batch', 2\], the spec says \['batch', 3\]"):
        check_graph(mlp_model_dir / "decoder.onnx", wrong_dim)
    wrong_dtype = GraphSpec("decoder", inputs=[TensorSpec("z", ("batch", 2), dtype="float16")],
                            outputs=[TensorSpec("images", ("batch", 1, 28, 28))])
    with pytest.raises(ModelFormatError, match="element type FLOAT, the spec says float16"):
        check_graph(mlp_model_dir / "decoder.onnx", wrong_dtype)


def test_fp16_export_keeps_float32_io(mlp_model_fp16_dir):
    manifest = read_manifest(mlp_model_fp16_dir)
    assert manifest.precision == "fp16" and manifest.export_profile["name"] == "gpu-fp16"
    assert "onnxconverter_common" in manifest.producer
    for name in ("encoder", "decoder"):
        inputs, outputs = _io(mlp_model_fp16_dir / f"{name}.onnx")
        assert {t for _, t, _ in inputs + outputs} == {onnx.TensorProto.FLOAT}
        initializers = onnx.load(str(mlp_model_fp16_dir / f"{name}.onnx")).graph.initializer
        weights = [i for i in initializers if len(i.dims) == 2]
        assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)


def test_fp16_io_when_the_profile_asks(mlp_checkpoint, tmp_path):
    profile = ExportProfile(name="fp16-io", precision="fp16", keep_io_types=False, parity_batch_sizes=(1, 7))
    manifest, report = export_model(mlp_checkpoint, tmp_path / "m", profile)
    assert report.passed
    assert manifest.graph("decoder").inputs[0].dtype == "float16"
    assert _io(tmp_path / "m" / "decoder.onnx")[0] == [("z", onnx.TensorProto.FLOAT16, ["batch", 2])]
    with load_runner(tmp_path / "m", "ort-cpu") as runner:
        with pytest.raises(InputShapeError, match=r"must be float16 \(batch, 2\), got dtype float32"):
            runner.decode(np.zeros((2, 2), np.float32))
        assert runner.decode(np.zeros((2, 2), np.float16)).dtype == np.float16


def test_reexport_replaces_a_model_folder(mlp_checkpoint, mlp_model_dir, tmp_path):
    folder = shutil.copytree(mlp_model_dir, tmp_path / "m")
    (folder / "manifest.json").write_text(json.dumps({"stale": True}))
    manifest, report = export_model(mlp_checkpoint, folder, ExportProfile(parity_batch_sizes=(1,)))
    assert report.passed and read_manifest(folder) == manifest
    assert not [p.name for p in folder.rglob("*") if ".part" in p.name]  # no temporary files left


def test_export_errors_are_clear(tmp_path, mlp_checkpoint):
    with pytest.raises(DataError, match="no-such-run does not exist"):
        export_model(tmp_path / "no-such-run", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a vae-deploy run folder .* nor a diffusers model folder"):
        export_model(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ConfigError, match="no export spec for model kind 'nope'"):
        graph_specs("nope", None)
    config = json.loads((mlp_checkpoint / "config.json").read_text())
    ckpt = shutil.copytree(mlp_checkpoint, tmp_path / "ckpt")
    (ckpt / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "latent_dim": 3}}))
    with pytest.raises(ConfigError, match="does not match its config"):
        export_model(ckpt, tmp_path / "out")
