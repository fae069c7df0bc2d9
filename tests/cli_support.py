"""Running `vae-deploy` in tests: as a real process, or through the same entry point in this process.

Importable from any test module (pytest puts tests/ on sys.path because tests/conftest.py lives there).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def cli_process(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """A real `vae-deploy` process: exit code, stdout and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "vae_deploy", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def main_exit_code(*args) -> int:
    """`vae-deploy ARGS` through main() in this process (sys.argv set for it); its exit code. main() installs
    its own SIGTERM handler: the caller's comes back after."""
    from vae_deploy.cli.app import main

    argv, sigterm = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["vae-deploy", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, sigterm)


def invoke_main(monkeypatch, capsys, *args) -> subprocess.CompletedProcess:
    """`main()` with argv in this process: the same entry point without a process start (or torch import).
    Output through pytest's capsys. (`monkeypatch` is no longer needed, main_exit_code restores argv itself;
    the callers still pass it.)"""
    code = main_exit_code(*args)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str, code: int | None = None) -> None:
    """The user-error contract: exit `code` (any non-zero when None), one `error: ...` line, no traceback."""
    if code is None:
        assert result.returncode != 0, (result.stdout, result.stderr)
    else:
        assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]


@contextlib.contextmanager
def full_disk(folder: Path, free_kib: int = 8):
    """A small tmpfs at `folder`, filled to `free_kib` KiB free: writes past that fail with ENOSPC."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    try:
        with open(folder / "filler", "wb") as fh:
            fh.write(b"\0" * ((512 - free_kib) * 1024))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
