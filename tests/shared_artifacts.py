"""Folders built once per test run and shared by every pytest-xdist worker (exported models, checkpoints).

The suite runs in several worker processes (`pytest -n`), and each has its own session: a session-scoped
fixture alone would export the same model once per worker. `build_once` builds a named folder under the
run's common temporary root, the first worker to ask doing the work while the others wait on a file lock,
then every worker reads the same folder. Without xdist the root is the session's own temporary folder, so
nothing is shared between runs (a folder from an older checkout must never stand in for a fresh export).

Read-only like any session fixture's folder: a test that modifies one copies it first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def run_root(tmp_path_factory) -> Path:
    """This run's temporary root, common to all its xdist workers (each worker's basetemp lies below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name` after `build(folder)` filled it, built by one worker of this run only. A build that
    raised leaves no mark: the next worker to ask tries again (and fails the same way, with its own
    traceback), so no test reads a half-built folder."""
    shared = run_root(tmp_path_factory) / "shared"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
