"""`vae-deploy verify` on the edge install (no torch): the backend against the golden outputs stored at
export, through the real CLI in a process where `import torch` fails; and the PyTorch-side commands'
one-line answer there."""

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys

import pytest
from cli_support import assert_one_line_error, cli_process, invoke_main, main_exit_code
from torch_free_support import edge_cli

from vae_deploy.errors import VaeDeployError
from vae_deploy.export.golden import GOLDEN_FILE
from vae_deploy.runtime import load_runner, read_manifest
from vae_deploy.runtime.manifest import hash_files, write_manifest
from vae_deploy.video.samples import sample_video_path

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


# ---------------------------------------------------------------- a folder never picks code to import

FACTORY = '''\
import torch
from torch import nn


class Tiny(nn.Module):
    in_channels, latent_channels, spatial_factor = 3, 4, 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Conv2d(3, 8, 8, stride=8)
        self.dec = nn.ConvTranspose2d(4, 3, 8, stride=8)

    def encode(self, x):
        return tuple(self.enc(x).chunk(2, dim=1))

    def decode(self, z):
        return torch.sigmoid(self.dec(z))


def build():
    return Tiny()


class NanDecoder(Tiny):
    def decode(self, z):
        y = torch.sigmoid(self.dec(z))
        return y + torch.sqrt(y - 0.5)  # NaN wherever y < 0.5, in PyTorch and in onnxruntime alike


def build_nan():
    return NanDecoder()
'''
# What a folder could name instead: importing it leaves a marker file (and build() would even work)
EVIL = "from pathlib import Path\nPath({marker!r}).write_text('imported')\nfrom tiny_factory import build\n"


def in_process(*args, path=()) -> subprocess.CompletedProcess:
    """`vae-deploy ARGS` through main() in this process, the folders in `path` importable as PYTHONPATH makes
    them in a process: the same entry point without a process start (an export process costs ~7 CPU s here,
    mostly imports; a verify ~2). Used where the check is about what the command does, not about a process
    of its own (a factory named os:abort, and the once-per-process parity warning, keep real processes).
    Modules imported from `path` are dropped afterwards, so the next call imports its own copy."""
    before = set(sys.modules)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for folder in reversed(path):
            mp.syspath_prepend(str(folder))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main_exit_code(*args)
        finally:
            for name in set(sys.modules) - before:
                module_file = getattr(sys.modules[name], "__file__", None) or ""
                if any(module_file.startswith(str(folder)) for folder in path):
                    del sys.modules[name]
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def entry_point_model(tmp_path_factory):
    """(a model folder exported with --from tiny_factory:build, the folder holding that module)."""
    code = tmp_path_factory.mktemp("factory_code")
    (code / "tiny_factory.py").write_text(FACTORY)
    model = code.parent / "entry_point_model"
    made = in_process("export", "--from", "tiny_factory:build", "--out", model, "--real", "2", path=[code])
    assert made.returncode == 0, made.stderr
    return model, code


def naming(model, tmp_path, entry_point: str, kind: str | None = None):
    """A copy of `model` whose reference/ (and manifest) record `entry_point`, hashes recomputed: a folder
    that passes every integrity check."""
    folder = shutil.copytree(model, tmp_path / "named")
    config_path = folder / "reference" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["entry_point"] = entry_point
    config["kind"] = kind or config["kind"]
    config_path.write_text(json.dumps(config))
    manifest = read_manifest(folder, check_files=False)
    manifest.model["entry_point"] = entry_point
    manifest.files = hash_files(folder, list(manifest.files))
    write_manifest(folder, manifest)
    read_manifest(folder)  # valid
    return folder


def test_verify_never_calls_an_entry_point_the_folder_names(entry_point_model, tmp_path):
    model, _ = entry_point_model
    folder = naming(model, tmp_path, "os:abort")
    auto = cli_process("verify", folder, "--real", "2")  # before: killed by SIGABRT
    assert auto.returncode == 0, (auto.returncode, auto.stderr)
    assert auto.stdout.splitlines()[0].startswith("reference: golden outputs stored at export (the factory "
                                                  "of a --from model is imported only when named")
    assert "parity ok" in auto.stdout
    forced = cli_process("verify", folder, "--reference", "torch", "--real", "2")
    assert_one_line_error(forced, "built by the factory it was exported with (--from os:abort); vae-deploy "
                                  "imports it only when you name it", code=2)


@pytest.mark.parametrize("kind", ["entry-point", "diffusers-autoencoder-kl"])
def test_a_module_a_folder_names_is_never_imported(entry_point_model, tmp_path, kind):
    model, code = entry_point_model
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "imported.txt"
    (evil / "evil_vae.py").write_text(EVIL.format(marker=str(marker)))
    folder = naming(model, tmp_path, "evil_vae:build", kind)
    # importable, were anything to try; no copy imported earlier in this process may hide an import
    assert "evil_vae" not in sys.modules
    for args, outcome in ((["--reference", "torch"], "vae-deploy imports it only when you name it"),
                          (["--from", "tiny_factory:build"], "was exported with --from evil_vae:build, not "
                                                             "--from tiny_factory:build"),
                          ([], None)):
        result = in_process("verify", folder, "--real", "2", *args, path=[evil, code])
        if outcome is None:  # auto: the golden outputs
            assert result.returncode == 0 and "reference: golden outputs" in result.stdout, result.stderr
        else:
            assert_one_line_error(result, outcome, code=2)
        assert not marker.exists(), args
    with pytest.raises(VaeDeployError, match="only when you name it"):
        load_runner(folder, "torch")
    assert not marker.exists()


def test_verify_from_the_named_factory_checks_against_pytorch(entry_point_model):
    model, code = entry_point_model
    result = in_process("verify", model, "--from", "tiny_factory:build", "--real", "2", path=[code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "reference: PyTorch (the folder's reference/ checkpoint)"
    assert "ort-cpu vs torch (fp32)" in result.stdout and "parity ok" in result.stdout


def test_verify_refuses_batch_sizes_over_the_graphs_cap_instead_of_checking_2(tiny_video_model, run):
    """Video graphs are checked at batches of at most 2 (GraphSpec.max_parity_batch); --batch-sizes 100000
    was silently checked at 2."""
    model = tiny_video_model("frame")
    result = run("verify", model, "--batch-sizes", "1,100000", "--real", "0")
    assert_one_line_error(result, "--batch-sizes 100000 is over what this model's graphs are checked at: at "
                                  "most 2", code=2)
    assert run("verify", model, "--batch-sizes", "1,2", "--real", "0").returncode == 0


def test_nan_outputs_fail_parity_by_name_and_a_failed_folder_runs_with_one_warning(entry_point_model,
                                                                                   tmp_path):
    """NaN outputs printed "PSNR nan" and, as max() skips NaN, the export's worst-case table showed the
    failing output with error 0 and PSNR inf; the folder (written so verify can show why) ran silently."""
    _, code = entry_point_model
    model = tmp_path / "nan_model"
    made = in_process("export", "--from", "tiny_factory:build_nan", "--out", model, "--real", "2",
                      path=[code])
    assert_one_line_error(made, "(worst decoder/video, real batch 1: NaN or inf values, needs abs<=0.0001)",
                          code=1)
    assert not re.search(r"\bnan\b", made.stdout)
    assert re.search(r"decoder/video\s*│\s*inf\s*│\s*inf\s*│\s*-inf", made.stdout), made.stdout
    assert read_manifest(model).parity["passed"] is False
    checked = in_process("verify", model, "--reference", "golden")
    assert_one_line_error(checked, "NaN or inf values", code=1)
    assert not re.search(r"\bnan\b", checked.stdout)
    # a process of its own: the warning comes once per folder and process (runtime/manifest.py)
    run = cli_process("run", sample_video_path("carphone_pristine"), "--model", model, "--out",
                      tmp_path / "o.mp4", "--max-frames", "2", "-q")
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {model} failed its parity check at export, so its outputs may be wrong "
                        f"(`vae-deploy verify {model}` shows where)"]
