"""Causes are kept (issue 23, item 7): an error raised while handling another names it as its cause, the
user sees one `error:` line, and VAE_DEPLOY_DEBUG=1 prints the full traceback with that chain before the
line, for expected errors as for bugs."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from cli_support import assert_one_line_error, invoke_main

from vae_deploy.runtime.latents import MAGIC

ROOT = Path(__file__).resolve().parents[2]
CHAINED = "The above exception was the direct cause of the following exception"


@pytest.fixture
def vd(monkeypatch, capsys):
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


def _corrupt_vaelat(path: Path) -> Path:
    header = b"{not json"
    path.write_bytes(MAGIC + header + struct.pack("<Q8s", len(header), MAGIC))
    return path


def _cases(tmp_path: Path) -> dict[str, tuple[list, str, str | None]]:
    """name -> (arguments, the error line's text, the cause's line in the traceback or None)."""
    bad = _corrupt_vaelat(tmp_path / "bad.vaelat")
    return {
        "corrupt latent file": (["decode", bad, "-o", tmp_path / "o.mp4"], f"{bad} has a corrupt header",
                                "json.decoder.JSONDecodeError: Expecting property name"),
        "bad --batch-sizes": (["bench", tmp_path, "--batch-sizes", "1,x"],
                              "--batch-sizes must be comma-separated integers, got '1,x'",
                              "ValueError: invalid literal for int() with base 10: 'x'"),
    }


@pytest.mark.parametrize("name", ["corrupt latent file", "bad --batch-sizes"])
def test_an_expected_error_is_one_line_and_its_cause_shows_under_debug(name, vd, tmp_path, monkeypatch):
    args, line, cause = _cases(tmp_path)[name]
    quiet = vd(*args)
    assert_one_line_error(quiet, line, 2)
    monkeypatch.setenv("VAE_DEPLOY_DEBUG", "1")
    loud = vd(*args)
    assert loud.returncode == 2
    lines = loud.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):", loud.stderr
    assert cause in loud.stderr and CHAINED in loud.stderr, loud.stderr
    assert lines[-1] == quiet.stderr.strip()  # the same one line, last
    assert not (tmp_path / "o.mp4").exists()


def test_a_missing_model_folder_shows_its_traceback_under_debug(vd, tmp_path, monkeypatch):
    """An expected error without a cause: its own traceback, then the line."""
    bad = _corrupt_vaelat(tmp_path / "bad.vaelat")
    args = ["run", bad, "--model", tmp_path / "nowhere", "--out", tmp_path / "o.mp4"]
    assert_one_line_error(vd(*args), f"model folder not found: {tmp_path / 'nowhere'}", 2)
    monkeypatch.setenv("VAE_DEPLOY_DEBUG", "1")
    loud = vd(*args)
    lines = loud.stderr.strip().splitlines()
    assert loud.returncode == 2 and lines[0].startswith("Traceback"), loud.stderr
    assert "ModelFormatError: model folder not found" in loud.stderr
    assert lines[-1] == f"error: model folder not found: {tmp_path / 'nowhere'}"


def test_no_handler_cuts_the_chain():
    """No `raise ... from None` is left in the package, except Ctrl-C turned back into KeyboardInterrupt in
    the pipeline (control flow, no cause to show) and, until their owners land their changes, the files of
    other work in progress (listed in PENDING)."""
    pending = {"vae_deploy/export/onnx_export.py", "vae_deploy/runtime/spec.py",
               "vae_deploy/runtime/manifest.py", "vae_deploy/export/profile.py", "vae_deploy/export/specs.py",
               "vae_deploy/cli/export.py"}
    cut = []
    for path in sorted((ROOT / "vae_deploy").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in pending or rel.startswith("vae_deploy/models/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant)
                    and node.cause.value is None):
                continue
            if rel == "vae_deploy/video/pipeline.py" and "Interrupt" in ast.unparse(node.exc):
                continue
            cut.append(f"{rel}:{node.lineno}")
    assert cut == []

