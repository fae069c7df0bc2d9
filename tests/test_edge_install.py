"""The edge install (no torch) at its declared floors: pyproject.toml's lower bounds are exactly the pins of
constraints-edge.txt, which scripts/edge_check.sh installs on Python 3.10; and the torch-free code this
checkout has runs in that environment (OpenCV 4.x, tomli instead of tomllib).

The tests that use the edge environment (.venv-edge) skip until scripts/edge_check.sh has built it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from vae_deploy.config_io import read_toml

ROOT = Path(__file__).parents[1]
EDGE_PYTHON = ROOT / ".venv-edge" / "bin" / "python"
needs_edge_env = pytest.mark.skipif(not EDGE_PYTHON.exists(),
                                    reason="no .venv-edge: run scripts/edge_check.sh to build it")

# OpenCV's own logging when a camera index does not exist ("[ WARN:0@0.02] global cap_v4l.cpp ... can't
# open camera by index"): open_source must report that in one DataError line and nothing else.
CAMERA_PROBE = """
import cv2
from vae_deploy.errors import DataError
from vae_deploy.video.sources import open_source

api = getattr(getattr(cv2, "utils", None), "logging", None)
level = (api.getLogLevel if api is not None else cv2.getLogLevel)()
try:
    open_source("57")
except DataError as exc:
    print(exc)
after = (api.getLogLevel if api is not None else cv2.getLogLevel)()
assert after == level, (level, after)
print("opencv", cv2.__version__)
"""


def edge_pins() -> dict[str, Requirement]:
    pins = {}
    for line in (ROOT / "constraints-edge.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name] = req
    return pins


def test_every_dependency_floor_is_pinned_for_the_edge_check():
    dependencies = read_toml(ROOT / "pyproject.toml")["project"]["dependencies"]
    floors = {}
    for text in dependencies:
        req = Requirement(text)
        (spec,) = req.specifier  # one lower bound each, nothing else
        assert spec.operator == ">=", text
        floors[req.name] = Version(spec.version)
    pins = edge_pins()
    assert sorted(pins) == sorted(floors)
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==" and Version(spec.version) == floors[name], (name, str(pin), floors[name])


def test_tomli_is_required_only_where_tomllib_is_missing():
    dependencies = read_toml(ROOT / "pyproject.toml")["project"]["dependencies"]
    (tomli,) = [Requirement(d) for d in dependencies if Requirement(d).name == "tomli"]
    assert tomli.marker.evaluate({"python_version": "3.10"})
    assert not tomli.marker.evaluate({"python_version": "3.11"})


def test_opening_a_missing_camera_prints_one_line_and_restores_the_log_level():
    result = subprocess.run([sys.executable, "-c", CAMERA_PROBE], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("camera 57 is not available")
    assert result.stderr == ""


@needs_edge_env
def test_this_checkout_runs_on_the_edge_env_at_its_floors():
    """Python 3.10 (tomli for tomllib) and OpenCV 4.x (no cv2.utils.logging): this checkout's code, not the
    copy installed there."""
    versions = "import sys, cv2, numpy; print(sys.version_info[:2], cv2.__version__, numpy.__version__)"
    check = subprocess.run([str(EDGE_PYTHON), "-c", versions], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["(3,", "10)", "4.8.0", "1.24.0"]  # the pins of constraints-edge.txt

    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    probe = subprocess.run([str(EDGE_PYTHON), "-c", CAMERA_PROBE], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, env=env)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["camera 57 is not available (no such device, or it is busy)",
                                         "opencv 4.8.0"]
    assert probe.stderr == ""
    toml = subprocess.run([str(EDGE_PYTHON), "-c", "import sys; from vae_deploy.config_io import read_toml; "
                           "print(read_toml('pyproject.toml')['project']['name'], 'tomllib' in sys.modules)"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert toml.returncode == 0, toml.stderr
    assert toml.stdout.split() == ["vae-deploy", "False"]
