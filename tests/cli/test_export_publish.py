"""`vae-deploy export --out` writes the model folder as a unit: built beside the target under a temporary
name and swapped in at the end; an existing folder is refused without --force; a failure, a full disk or a
stop signal leaves the previous folder (or nothing), never a mix and never a temporary folder."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
from cli_support import assert_one_line_error, invoke_main

from vae_deploy.errors import ConfigError
from vae_deploy.export.publish import staged_folder
from vae_deploy.runtime import read_manifest

FAST = ["--real", "0"]


@pytest.fixture
def run(capsys, monkeypatch):
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


@pytest.fixture
def old_model(mlp_model_dir, tmp_path):
    """A model folder already at the target path (with an engines/ cache), and its manifest's bytes."""
    folder = shutil.copytree(mlp_model_dir, tmp_path / "m")
    (folder / "engines").mkdir()
    (folder / "engines" / "cached.engine").write_bytes(b"engine bytes")
    return folder, (folder / "manifest.json").read_bytes()


def test_export_refuses_an_existing_folder_without_force(mlp_checkpoint, old_model, run):
    folder, manifest_bytes = old_model
    result = run("export", mlp_checkpoint, "--out", folder, *FAST)
    assert_one_line_error(result, "already exists and is not empty: pass --force", code=2)
    assert (folder / "manifest.json").read_bytes() == manifest_bytes
    assert sorted(p.name for p in folder.parent.iterdir()) == ["m"]


def test_export_force_replaces_the_folder_and_keeps_engines(mlp_checkpoint, old_model, run):
    folder, manifest_bytes = old_model
    result = run("export", mlp_checkpoint, "--out", folder, "--force", *FAST)
    assert result.returncode == 0, result.stderr
    assert (folder / "manifest.json").read_bytes() != manifest_bytes
    manifest = read_manifest(folder)
    assert manifest.parity["passed"] and not any(c["case"] == "real" for c in manifest.parity["comparisons"])
    assert (folder / "engines" / "cached.engine").read_bytes() == b"engine bytes"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["m"]  # nothing aside, nothing staged


def test_force_never_replaces_a_folder_that_is_not_a_model(mlp_checkpoint, tmp_path, run):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    result = run("export", mlp_checkpoint, "--out", notes, "--force", *FAST)
    assert_one_line_error(result, "is not a model folder", code=2)
    assert (notes / "todo.txt").read_text() == "keep me"


def test_a_failed_export_leaves_nothing(mlp_checkpoint, tmp_path, run):
    """The parity backend is checked after the graphs, reference/ and golden.npz were written: all of it,
    and the parent folders export created, must go."""
    result = run("export", mlp_checkpoint, "--out", tmp_path / "new" / "deeper" / "model", *FAST,
                 "--parity-backend", "nope")
    assert_one_line_error(result, "unknown backend 'nope'", code=2)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_keeps_the_previous_folder(mlp_checkpoint, old_model, run):
    folder, manifest_bytes = old_model
    result = run("export", mlp_checkpoint, "--out", folder, "--force", *FAST, "--parity-backend", "nope")
    assert_one_line_error(result, "unknown backend 'nope'", code=2)
    assert (folder / "manifest.json").read_bytes() == manifest_bytes
    read_manifest(folder)  # every file still matches the old manifest
    assert sorted(p.name for p in folder.parent.iterdir()) == ["m"]


def test_sigterm_during_export_keeps_the_previous_folder(mlp_checkpoint, old_model):
    folder, manifest_bytes = old_model
    args = ["export", str(mlp_checkpoint), "--out", str(folder), "--force", *FAST]
    process = subprocess.Popen([sys.executable, "-m", "vae_deploy", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    staged = []
    while not staged and process.poll() is None and time.monotonic() < deadline:
        # Signal once the new folder is half built: graphs written, manifest not yet.
        staged = [p for p in folder.parent.glob(".m.*") if (p / "encoder.onnx").exists()]
        time.sleep(0.005)
    assert staged, "the export never showed a staging folder beside the target"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "terminated" in stderr
    assert (folder / "manifest.json").read_bytes() == manifest_bytes
    read_manifest(folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["m"]


def _can_mount_tmpfs(where) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("size", ["1m", "2200k"])  # full while writing a graph / while copying reference/
def test_a_full_disk_leaves_nothing(mlp_checkpoint, tmp_path, size):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs `unshare -rm` to mount a small tmpfs (user namespaces)")
    script = ('mount -t tmpfs -o size="$4" tmpfs "$1" && "$2" -m vae_deploy export "$3" --out "$1/sub/model" '
              '--real 0; rc=$?; echo "left: [$(ls -A "$1")]"; exit $rc')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(disk), sys.executable,
                             str(mlp_checkpoint), size], capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, "", code=1)
    assert "no space left on device" in result.stderr.lower()
    assert "left: []" in result.stdout  # no model folder, no temporary folder, no sub/


def test_staged_folder_cleans_up_on_interrupt(tmp_path):
    target = tmp_path / "a" / "model"
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(target) as work:
            (work / "half.onnx").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    target.mkdir(parents=True)
    (target / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        with staged_folder(target, overwrite=False):
            pass
    with staged_folder(target) as work:
        (work / "manifest.json").write_text('{"new": true}')
    assert (target / "manifest.json").read_text() == '{"new": true}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]
