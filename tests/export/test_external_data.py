"""A graph that keeps its tensors in ONNX external data files (as graphs over 2 GB must): onnxruntime reads
those files beside the graph, so the manifest's sha256 must cover them too, or a swapped weights file runs
unnoticed. A folder whose graph reads an unlisted file is refused in one line."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
from cli_support import assert_one_line_error, invoke_main

from vae_deploy.runtime.manifest import external_data_files, hash_files, read_manifest, write_manifest


def with_external_encoder(model_dir, folder, listed: bool):
    """A copy of `model_dir` whose encoder.onnx keeps its tensors in encoder.weights, the manifest's
    hashes recomputed (listing encoder.weights when `listed`)."""
    shutil.copytree(model_dir, folder)
    graph = onnx.load(str(folder / "encoder.onnx"))
    # onnx's default threshold, as a graph over 2 GB is saved: the weights go out, tensors under 1 kB stay in
    # the graph (a Reshape's target shape among them, which onnxruntime must read when it loads the graph)
    onnx.save_model(graph, str(folder / "encoder.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="encoder.weights", size_threshold=1024)
    manifest = read_manifest(folder, check_files=False)
    manifest.files = hash_files(folder, list(manifest.files) + (["encoder.weights"] if listed else []))
    write_manifest(folder, manifest)
    return folder


def test_a_graph_reading_an_unlisted_weights_file_is_refused(mlp_model_dir, tmp_path, monkeypatch, capsys):
    folder = with_external_encoder(mlp_model_dir, tmp_path / "m", listed=False)
    assert external_data_files(folder, "encoder.onnx") == ["encoder.weights"]
    result = invoke_main(monkeypatch, capsys, "verify", folder, "--real", "0")  # before: parity ok
    assert_one_line_error(result, f"{folder / 'encoder.onnx'} reads tensors from encoder.weights, which "
                                  f"manifest.json does not vouch for (no sha256)", code=2)


def test_a_listed_weights_file_is_hash_checked_like_the_graph(mlp_model_dir, tmp_path, monkeypatch, capsys):
    folder = with_external_encoder(mlp_model_dir, tmp_path / "m", listed=True)
    ok = invoke_main(monkeypatch, capsys, "verify", folder, "--real", "0")
    assert ok.returncode == 0, ok.stderr
    weights = np.fromfile(folder / "encoder.weights", dtype=np.float32)
    (weights + 1).tofile(folder / "encoder.weights")  # same size, other values
    result = invoke_main(monkeypatch, capsys, "verify", folder, "--real", "0")
    assert_one_line_error(result, "encoder.weights does not match the manifest", code=2)


def test_export_lists_no_external_files_for_a_graph_without_them(mlp_model_dir):
    manifest = read_manifest(mlp_model_dir)
    assert all(external_data_files(mlp_model_dir, g.file) == [] for g in manifest.graphs.values())
    assert sorted(manifest.files) == sorted(["encoder.onnx", "decoder.onnx", "golden.npz",
                                             "reference/model.safetensors", "reference/config.json"])
