"""`vae-deploy verify` on the edge install (no torch): the backend against the golden outputs stored at
export, through the real CLI in a process where `import torch` fails; and the PyTorch-side commands'
one-line answer there."""

import json
import shutil

import pytest
from cli_support import assert_one_line_error, invoke_main
from torch_free_support import edge_cli

from vae_deploy.export.golden import GOLDEN_FILE
from vae_deploy.runtime import read_manifest
from vae_deploy.runtime.manifest import write_manifest

TRAIN_EXTRA = "pip install 'vae-deploy[train]'"


@pytest.fixture
def run(capsys, monkeypatch):
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


def _without_golden(folder, tmp_path):
    """A copy of the folder as an export from before golden data existed (manifest without golden.npz)."""
    old = shutil.copytree(folder, tmp_path / "old")
    (old / GOLDEN_FILE).unlink()
    manifest = read_manifest(old, check_files=False)
    del manifest.files[GOLDEN_FILE]
    write_manifest(old, manifest)
    return old


def test_verify_without_torch_compares_with_golden_outputs(mlp_model_dir):
    result = edge_cli("verify", mlp_model_dir, "--backend", "ort-cpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "reference: golden outputs stored at export (torch not installed)"
    for name in ("encoder/mu", "encoder/logvar", "decoder/images"):
        assert f"{name}: ort-cpu vs golden (fp32)" in result.stdout
    assert "parity ok: 9 comparisons within tolerance" in result.stdout  # 3 encoder cases x 2, 3 decoder x 1
    assert result.stderr == ""


def test_verify_without_torch_json(mlp_model_fp16_dir):
    result = edge_cli("verify", mlp_model_fp16_dir, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["reference"] == "golden" and report["precision"] == "fp16"
    assert {c["limit"] for c in report["comparisons"]} == {"psnr>=50dB"}


def test_verify_without_torch_streams_a_video_model(tiny_video_model):
    result = edge_cli("verify", tiny_video_model("causal3d-t2"))
    assert result.returncode == 0, result.stderr
    assert "reference: golden outputs stored at export (torch not installed)" in result.stdout
    assert "chunk" in result.stdout and "parity ok" in result.stdout


def test_verify_without_torch_or_golden_is_one_line(mlp_model_dir, tmp_path):
    old = _without_golden(mlp_model_dir, tmp_path)
    result = edge_cli("verify", old)
    assert_one_line_error(result, TRAIN_EXTRA, code=2)
    assert "re-export" in result.stderr and "golden" in result.stderr
    assert_one_line_error(edge_cli("verify", old, "--reference", "torch"), TRAIN_EXTRA, code=2)


def test_verify_with_torch_keeps_the_pytorch_reference(mlp_model_dir, tmp_path, run):
    result = run("verify", mlp_model_dir, "--real", "0", "--batch-sizes", "1,7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "reference: PyTorch (the folder's reference/ checkpoint)"
    assert "ort-cpu vs torch (fp32)" in result.stdout
    forced = run("verify", mlp_model_dir, "--reference", "golden")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[0] == "reference: golden outputs stored at export (--reference golden)"
    assert "ort-cpu vs golden (fp32)" in forced.stdout
    old = _without_golden(mlp_model_dir, tmp_path)
    assert_one_line_error(run("verify", old, "--reference", "golden"), "has no golden outputs", code=2)
    assert_one_line_error(run("verify", old, "--reference", "nope"), "--reference must be one of", code=2)


def test_torch_side_commands_name_the_extra_without_torch(mlp_checkpoint, tmp_path):
    for args in (("train", "train/mnist_mlp.toml", "--out", tmp_path / "run"),
                 ("export", mlp_checkpoint, "--out", tmp_path / "model"),
                 ("evaluate", mlp_checkpoint)):
        result = edge_cli(*args)
        assert_one_line_error(result, TRAIN_EXTRA, code=2)
        assert f"`vae-deploy {args[0]}` needs torch" in result.stderr
    assert list(tmp_path.iterdir()) == []
