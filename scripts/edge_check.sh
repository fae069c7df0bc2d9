#!/usr/bin/env bash
# The edge install at its declared floors: a separate virtualenv (.venv-edge) with Python 3.10 (a Jetson's
# JetPack 6 Python), the torch-free runtime pinned to every lower bound of pyproject.toml's dependencies
# (constraints-edge.txt), the package installed from a copy of the source (not editable, no extras), then
# the edge commands from a temporary folder. Needs PyPI (or a mirror) for the pinned releases.
#
#   bash scripts/edge_check.sh          EDGE_PYTHON=/path/to/python to choose the interpreter
#
# Each step prints `== step`; a failed step prints `edge check FAILED at step: ...`, the rest still run, and
# the script exits 1 naming every failed step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv-edge
START=$SECONDS

PYTHON=
if [ -n "${EDGE_PYTHON:-}" ]; then
  PYTHON=$EDGE_PYTHON
else
  # The first Python 3.10 that runs (a pyenv shim named python3.10 may exist and refuse to run).
  for candidate in python3.10 /root/.pyenv/versions/3.10.13/bin/python; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then
      PYTHON=$candidate
      break
    fi
  done
  PYTHON=${PYTHON:-python3}
fi
VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$VERSION" != "3.10" ]; then
  echo "edge check: no Python 3.10 found; using $PYTHON (Python $VERSION), so the 3.10 floor is NOT tested"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# A fresh environment each time: packages left from an earlier run must not hide a missing requirement.
echo "== create $VENV with $PYTHON (Python $VERSION)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

# Build from a copy: an in-tree build/ folder can carry files of earlier builds into the wheel.
echo "== install the package at the floors of constraints-edge.txt (no extras)"
mkdir -p "$WORK/src"
tar -C "$ROOT" --exclude=__pycache__ -cf - pyproject.toml README.md vae_deploy | tar -C "$WORK/src" -xf -
if ! "${PIP[@]}" -c "$ROOT/constraints-edge.txt" "$WORK/src"; then
  echo "edge check FAILED at step: install" >&2
  exit 1
fi
"$PY" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(numpy|onnx|onnxruntime|opencv-python-headless|av|typer|click|rich|tomli|protobuf) ' || true

FAILED=()
step() {  # step NAME COMMAND...: run COMMAND in $WORK, remember NAME when it fails
  local name=$1
  shift
  echo "== $name"
  if ! (cd "$WORK" && "$@"); then
    echo "edge check FAILED at step: $name" >&2
    FAILED+=("$name")
  fi
}
no_module() {  # no_module NAME: the edge install must not have it
  if "$PY" -c "import $1" >/dev/null 2>&1; then
    echo "$1 is importable in the edge environment" >&2
    return 1
  fi
}
exists() { test -s "$1" || { echo "$1 was not written" >&2; return 1; }; }
VD=$VENV/bin/vae-deploy
cd "$WORK"  # from here on: away from the source tree, which `python -c` would import instead
# What the installed package ships (not scikit-video's copy: the edge environment has none).
CLIP=$("$PY" -c "from vae_deploy.video.samples import sample_video_path as p; print(p('carphone_pristine'))") \
  || CLIP=$WORK/no-packaged-clip
MODEL=$("$PY" -c "from vae_deploy.video.default_model import default_model_dir as d; print(d())") \
  || MODEL=$WORK/no-packaged-model
run_clip() { "$VD" run clip.mp4 --out x.mp4 --max-frames 16 && exists x.mp4; }
encode_clip() { "$VD" encode clip.mp4 -o x.vaelat --max-frames 16 && exists x.vaelat; }
decode_latents() { "$VD" decode x.vaelat -o y.mp4 && exists y.mp4; }
demo() { "$VD" demo --out-dir demo && exists demo/reconstruction.mp4 && exists demo/metrics.json; }

step "the installed copy is the one imported" \
  "$PY" -c "import sys, vae_deploy; assert vae_deploy.__file__.startswith(sys.prefix), vae_deploy.__file__"
step "no torch" no_module torch
step "no scikit-video" no_module skvideo
step "pip check" "$PY" -m pip check --disable-pip-version-check
step "the demo clip is packaged" cp "$CLIP" clip.mp4
run_help() { "$VD" run --help >/dev/null; }
step "run --help" run_help
step "run" run_clip
step "encode" encode_clip
step "decode" decode_latents
step "verify (packaged default model, ort-cpu)" "$VD" verify "$MODEL" --backend ort-cpu
step "demo" demo
step "bench (packaged default model, streamed chunks)" "$VD" bench "$MODEL" --repeats 2 --warmup 1
step "packaged export profile by name" "$PY" -c \
  "from vae_deploy.export.profile import load_profile; assert load_profile('jetson-orin-fp16').dynamic['batch'].max == 256"

echo "edge check took $((SECONDS - START)) s"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'edge check FAILED: %s\n' "$(IFS=,; echo "${FAILED[*]}")" >&2
  exit 1
fi
echo "edge check passed: Python $VERSION, the floors of constraints-edge.txt, no torch"
