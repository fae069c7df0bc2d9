"""Which ONNX exporter writes each graph (issue 23): torch's torch.export-based exporter (dynamo=True) for every
graph of every model kind and adapter family, recorded per graph in the manifest; the legacy TorchScript
exporter only where a profile asks for an opset below 18 (or LEGACY_GRAPHS names a graph); older manifests
without the record still load."""

import json
import shutil
import warnings

import pytest
from external_zoo import WAN_GRAPHS, external_folder, external_model  # noqa: F401 (pytest fixtures)

from vae_deploy.export import ExportProfile, export_model
from vae_deploy.export.onnx_export import (
    DYNAMO,
    LEGACY_GRAPHS,
    TORCHSCRIPT,
    choose_exporter,
    dynamic_shapes,
    export_env,
)
from vae_deploy.export.specs import graph_specs
from vae_deploy.models import MLPVAEConfig, build_model
from vae_deploy.runtime import read_manifest
from vae_deploy.runtime.spec import eval_dim

# a model of each kind whose shared export other tests read (tests/tiny_models.py TINY_VIDEO_MODELS); the
# temporal kind's graphs are checked where tests/export/test_video_export.py exports it
VIDEO_MODELS = ("frame", "causal3d-t1", "causal3d-t2")


def _recorded(folder):
    raw = json.loads((folder / "manifest.json").read_text())["graphs"]
    return {name: g.get("exporter") for name, g in raw.items()}, read_manifest(folder)


def test_mlp_graphs_are_exported_by_dynamo(mlp_model_dir):
    raw, manifest = _recorded(mlp_model_dir)
    assert raw == {"encoder": DYNAMO, "decoder": DYNAMO}
    assert {name: g.exporter for name, g in manifest.graphs.items()} == raw


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_video_graphs_are_exported_by_dynamo(tiny_video_model, name):
    raw, manifest = _recorded(tiny_video_model(name))
    assert raw == {"encoder": DYNAMO, "decoder": DYNAMO}
    assert manifest.parity["passed"] is True
    # the state keeps its names and formulas: the exporter's own dim names never reach the manifest
    encoder = manifest.graph("encoder")
    assert encoder.input_names[1:] == [f"past_{i}" for i in range(len(encoder.state))]


@pytest.mark.parametrize("name", ["kl-sd", "tiny", "wan2.1"])
def test_adapter_graphs_are_exported_by_dynamo(external_model, name):  # noqa: F811 (fixture)
    raw, manifest = _recorded(external_model(name).model_dir)
    graphs = WAN_GRAPHS if name.startswith("wan") else ("encoder", "decoder")
    assert raw == dict.fromkeys(graphs, DYNAMO)  # a Wan graph joined from its parts: theirs
    assert manifest.parity["passed"] is True


def test_export_raises_no_legacy_exporter_warning(mlp_checkpoint, mnist_test_images, tmp_path, caplog):
    with warnings.catch_warnings():
        # the legacy exporter's "You are using the legacy TorchScript-based ONNX export" DeprecationWarning,
        # and any deprecation of the export path itself, fail the test
        warnings.filterwarnings("error", message=".*(TorchScript|torch.onnx|ONNX export).*",
                                category=DeprecationWarning)
        warnings.filterwarnings("error", message=".*(TorchScript|torch.onnx|ONNX export).*",
                                category=FutureWarning)
        manifest, report = export_model(mlp_checkpoint, tmp_path / "m", real_inputs=mnist_test_images[:16],
                                        profile=ExportProfile(parity_batch_sizes=(1, 3)))
    assert report.passed
    assert {name: g.exporter for name, g in manifest.graphs.items()} == {"encoder": DYNAMO, "decoder": DYNAMO}
    assert "legacy TorchScript" not in caplog.text


def test_an_opset_below_18_takes_the_legacy_exporter_and_says_so(mlp_checkpoint, mnist_test_images, tmp_path):
    manifest, report = export_model(mlp_checkpoint, tmp_path / "m", real_inputs=mnist_test_images[:16],
                                    profile=ExportProfile(opset=17, parity_batch_sizes=(1, 3)))
    assert report.passed and manifest.opset == 17
    assert {name: g.exporter for name, g in read_manifest(tmp_path / "m").graphs.items()} == {
        "encoder": TORCHSCRIPT, "decoder": TORCHSCRIPT}


def test_choose_exporter():
    specs = graph_specs("mlp", MLPVAEConfig(latent_dim=2))
    assert choose_exporter("mlp", specs["encoder"], 18) == DYNAMO
    assert choose_exporter("mlp", specs["encoder"], 17) == TORCHSCRIPT
    assert not LEGACY_GRAPHS  # every graph of every kind and family goes through dynamo today


@pytest.mark.parametrize("name", ["frame", "causal3d-t4"])
def test_export_sizes_keep_every_symbolic_dim_apart(name):
    """Example sizes for torch.export: no symbolic dim of 0 or 1 (it would be fixed) and no two different
    ones equal (they would be merged), state formulas included; every symbolic axis is dynamic."""
    from tiny_models import TINY_VIDEO_MODELS

    kind, config = TINY_VIDEO_MODELS[name]
    model = build_model(kind, config)
    for spec in graph_specs(kind, model.config, model).values():
        env = export_env(spec)
        values = {}
        for t in spec.all_inputs:
            for d in t.shape:
                if isinstance(d, str):
                    values[d] = eval_dim(d, env)
        assert min(values.values()) >= 2
        assert len(set(values.values())) == len(values), values
        for symbol, multiple in spec.dim_multiples.items():
            assert env[symbol] % multiple == 0
        (shapes,) = dynamic_shapes(spec)
        assert [set(s) for s in shapes] == [set(t.dynamic_axes) for t in spec.all_inputs]


def test_a_manifest_without_exporter_records_still_loads(mlp_model_dir, tmp_path):
    folder = shutil.copytree(mlp_model_dir, tmp_path / "old")
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for graph in data["graphs"].values():
        graph.pop("exporter")
    path.write_text(json.dumps(data))
    assert {g.exporter for g in read_manifest(folder).graphs.values()} == {""}


def test_the_packaged_model_loads_without_exporter_records():
    from vae_deploy.video.default_model import default_model_dir

    folder = default_model_dir()
    raw = json.loads((folder / "manifest.json").read_text())["graphs"]
    assert all("exporter" not in g for g in raw.values())  # written by the legacy exporter, left as it is
    manifest = read_manifest(folder)
    assert {g.exporter for g in manifest.graphs.values()} == {""}
    assert manifest.parity["passed"] is True and manifest.opset == 17
