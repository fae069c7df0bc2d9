"""Running `vae-deploy` as a real process on what looks like the edge install (no torch, no train extra).

Importable from any test module, like cli_support.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cli_support import cli_process

NO_TORCH = Path(__file__).resolve().parent / "no_torch"  # sitecustomize.py that blocks the train extra


def edge_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NO_TORCH), env.get("PYTHONPATH", "")) if p)
    return env


def edge_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    """`python -m vae_deploy ARGS` in a process where importing torch fails."""
    return cli_process(*args, timeout=timeout, env=edge_env())
