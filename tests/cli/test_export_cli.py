"""`vae-deploy export / verify / sample / bench` end to end, as a user runs them (subprocess, real files)."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, invoke_main
from cli_support import cli_process as cli

from vae_deploy.models.checkpoint import load_model, save_model
from vae_deploy.runtime import read_manifest
from vae_deploy.runtime.manifest import hash_files, write_manifest

DATA = ["--data-source", "mnist-5k", "--real", "200"]


@pytest.fixture
def run(capsys, monkeypatch):
    """`vae-deploy` through main() in this process."""
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


@pytest.fixture(scope="module")
def exported(mlp_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = cli("export", mlp_checkpoint, "--out", out, *DATA)
    assert result.returncode == 0, result.stderr
    return out, result


def test_export_writes_a_model_folder(exported):
    out, result = exported
    assert {p.name for p in out.iterdir()} == {"manifest.json", "encoder.onnx", "decoder.onnx", "reference",
                                           "golden.npz"}
    assert "parity at export: ort-cpu vs torch (fp32)" in result.stdout
    assert "decoder/images" in result.stdout and f"wrote {out}" in result.stdout.replace("\n", "")
    manifest = read_manifest(out)
    assert manifest.parity["passed"]
    assert {c["batch"] for c in manifest.parity["comparisons"] if c["case"] == "real"} == {200}


def test_export_with_a_profile(mlp_checkpoint, tmp_path, run):
    result = run("export", mlp_checkpoint, "--out", tmp_path / "m",
                 "--profile", "export/jetson-orin-fp16.toml", "--real", "0")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "m")
    assert manifest.precision == "fp16" and manifest.export_profile["name"] == "jetson-orin-fp16"
    assert "(fp16)" in result.stdout


def test_verify_prints_a_table_per_output(exported, run):
    out, _ = exported
    result = run("verify", out, *DATA, "--batch-sizes", "1,7,128,1000")
    assert result.returncode == 0, result.stderr
    for name in ("encoder/mu", "encoder/logvar", "decoder/images"):
        assert f"{name}: ort-cpu vs torch (fp32)" in result.stdout
    assert "max abs" in result.stdout and "PSNR dB" in result.stdout
    assert "parity ok: 15 comparisons within tolerance" in result.stdout


def test_verify_json(exported, run):
    out, _ = exported
    result = run("verify", out, "--json", *DATA, "--batch-sizes", "1,7")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["backend"] == "ort-cpu" and report["reference"] == "torch"
    cases = {(c["case"], c["batch"]) for c in report["comparisons"]}
    assert cases == {("real", 200), ("random", 1), ("random", 7)}
    assert max(c["max_abs"] for c in report["comparisons"]) <= 1e-5
    assert list(out.parent.iterdir()) == [out]  # verify writes nothing


def test_verify_exits_1_when_parity_fails(exported, tmp_path):
    folder = shutil.copytree(exported[0], tmp_path / "m")
    model, _ = load_model(folder / "reference")
    with torch.no_grad():
        model.encoder[2].weight.mul_(1.01)
    save_model(folder / "reference", model)
    manifest = read_manifest(folder, check_files=False)
    manifest.files = hash_files(folder, list(manifest.files))
    write_manifest(folder, manifest)
    result = cli("verify", folder, "--real", "0", "--batch-sizes", "7")
    assert_one_line_error(result, "parity failed", code=1)
    assert "FAIL" in result.stdout


def test_sample_writes_a_reproducible_grid(exported, tmp_path, run):
    out, _ = exported
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert run("sample", out, "-n", "64", "--out", first, "--seed", "7").returncode == 0
    assert run("sample", out, "-n", "64", "--out", second, "--seed", "7").returncode == 0
    grid = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    assert grid.shape == (2 + 8 * 30, 2 + 8 * 30) and grid.dtype == np.uint8
    assert grid.max() > 128  # digits, not a blank page
    np.testing.assert_array_equal(grid, cv2.imread(str(second), cv2.IMREAD_UNCHANGED))
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_bench_json(exported, run):
    out, _ = exported
    result = run("bench", out, "--json", "--batch-sizes", "1,16", "--repeats", "5", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = report["results"]
    # Every row names the input shape it timed: MNIST images (N, 1, 28, 28), 2-d latents (N, 2).
    assert {(r["graph"], tuple(r["shape"])) for r in rows} == {
        ("encoder", (1, 1, 28, 28)), ("encoder", (16, 1, 28, 28)), ("decoder", (1, 2)), ("decoder", (16, 2))}
    assert all(r["batch"] == r["shape"][0] and r["unit"] == "items" and r["chunk_frames"] is None
               for r in rows)
    assert all(0 < r["median_ms"] <= r["p95_ms"] and r["repeats"] == 5 for r in rows)
    assert all(r["per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3)) for r in rows)
    assert report["kind"] == "mlp" and "batch size" in report["timed"]


def test_bench_table(exported, run):
    result = run("bench", exported[0], "--batch-sizes", "2", "--repeats", "3")
    assert result.returncode == 0, result.stderr
    words = " ".join(result.stdout.split())  # the title wraps where the folder's path makes it long
    assert "median ms" in result.stdout and "items/s" in result.stdout and "ms per call" in words
    assert "(2, 1, 28, 28)" in result.stdout and "(2, 2)" in result.stdout  # the shapes timed


def test_bench_times_a_video_model_in_streamed_chunks(tiny_video_model, run):
    """A video model is timed as `run` streams it: chunks of 8 frames (the pipeline's chunk) at the working
    size `run` gives a 16:9 source (the manifest's short side 32, snapped to multiples of 8: 56x32), batch 1,
    frames/s; the decoder on that chunk's latents (8 latent frames of 4 x 4 x 7 for downsample 8)."""
    model = tiny_video_model("frame")
    result = run("bench", model, "--json", "--repeats", "4", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    shapes = {r["graph"]: tuple(r["shape"]) for r in report["results"]}
    assert shapes == {"encoder": (1, 8, 3, 32, 56), "decoder": (1, 8, 4, 4, 7)}
    for r in report["results"]:
        assert r["unit"] == "frames" and r["chunk_frames"] == 8 and r["repeats"] == 4
        assert 0 < r["median_ms"] <= r["p95_ms"]
        assert r["per_s"] == pytest.approx(8 / (r["median_ms"] / 1e3))
    assert "chunks of 8 frames at 56x32" in report["timed"] and "state carried" in report["timed"]

    # --size and --chunk choose the case; the table prints the shapes and the unit.
    result = run("bench", model, "--size", "48", "--chunk", "4", "--repeats", "2", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # the title may wrap
    assert "(1, 4, 3, 48, 88)" in text and "(1, 4, 4, 6, 11)" in text
    assert "frames/s" in text and "ms per chunk" in text and "chunks of 4 frames at 88x48" in text


def test_bench_refuses_options_of_the_other_model_type(exported, tiny_video_model, run):
    video = tiny_video_model("frame")
    assert_one_line_error(run("bench", video, "--batch-sizes", "1,128"), "--batch-sizes is for image models",
                          code=2)
    assert_one_line_error(run("bench", exported[0], "--chunk", "8"), "--chunk and --size are for video",
                          code=2)
    assert_one_line_error(run("bench", tiny_video_model("causal3d-t2"), "--chunk", "3"),
                          "not a multiple of the model's temporal factor 2", code=2)


def test_user_errors_are_one_line(exported, tmp_path, run):
    out, _ = exported
    # As a process: the console entry point's handling of our errors.
    assert_one_line_error(cli("export", tmp_path / "missing", "--out", tmp_path / "o"),
                          "missing does not exist", code=2)
    assert_one_line_error(run("verify", out, "--backend", "nope"), "unknown backend 'nope'", code=2)
    assert_one_line_error(run("sample", out, "--out", tmp_path / "grid.txt"), "must be an image file", code=2)
    assert_one_line_error(run("bench", out, "--batch-sizes", "one"), "comma-separated integers", code=2)
    assert_one_line_error(run("export", out / "reference", "--out", tmp_path / "o", "--profile", "nope"),
                          "unknown export profile 'nope'", code=2)
    tampered = shutil.copytree(out, tmp_path / "t")
    (tampered / "encoder.onnx").write_bytes(b"not onnx")
    assert_one_line_error(run("verify", tampered), "does not match the manifest", code=2)
    assert_one_line_error(run("sample", tampered, "--out", tmp_path / "g.png"),
                          "does not match the manifest", code=2)
