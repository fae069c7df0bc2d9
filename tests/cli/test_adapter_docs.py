"""docs/adapters.md's worked `--from` example, as a user runs it: its module block written to a folder, the
documented export command as a real process with that folder on PYTHONPATH, then `run` on the packaged clip
with the exported folder; and a factory that breaks the contract ending in one error line."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import cv2
import pytest
import torch
from cli_support import assert_one_line_error, invoke_main
from cli_support import cli_process as cli
from safetensors.torch import save_file

from vae_deploy.models.families import ENTRY_POINT_KIND
from vae_deploy.video.samples import sample_video_path

DOC = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"
MARKER = "<!-- tested: my_vae.py"
EXPORT = "PYTHONPATH=. vae-deploy export --from my_vae:build --out my_model"
RUN = "vae-deploy run clip.mp4 --model my_model --out recon.mp4"
FRAMES = 4


def example_module() -> str:
    """The ```python block right after the marker comment in docs/adapters.md (exactly one marker)."""
    text = DOC.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"{DOC} must mark the worked example once with {MARKER!r}"
    block = re.match(r"[^\n]*\n```python\n(.*?)\n```", text[text.index(MARKER):], re.DOTALL)
    assert block, f"no ```python block follows {MARKER!r} in {DOC}"
    return block.group(1) + "\n"


def user_env(folder: Path, **extra: str) -> dict[str, str]:
    """The user's shell: PYTHONPATH=. in the folder holding my_vae.py."""
    return {**os.environ, "PYTHONPATH": str(folder), **extra}


@pytest.fixture()
def example(tmp_path) -> Path:
    (tmp_path / "my_vae.py").write_text(example_module(), encoding="utf-8")
    return tmp_path


def test_documented_from_example_exports_and_streams_the_packaged_clip(example):
    doc = DOC.read_text(encoding="utf-8")
    assert EXPORT in doc and RUN in doc  # the commands below are the documented ones

    export = cli("export", "--from", "my_vae:build", "--out", "my_model", cwd=example, env=user_env(example))
    assert export.returncode == 0, export.stderr
    manifest = json.loads((example / "my_model" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == ENTRY_POINT_KIND == "entry-point"
    assert manifest["model"]["entry_point"] == "my_vae:build"
    assert manifest["parity"]["passed"] and manifest["parity"]["reference"] == "torch"

    # `run` needs neither the module nor PYTHONPATH: the edge side reads the model folder only.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = cli("run", sample_video_path("carphone_pristine"), "--model", "my_model", "--out", "recon.mp4",
              "--max-frames", FRAMES, "--quiet", cwd=example, env=env)
    assert run.returncode == 0, run.stderr
    video = cv2.VideoCapture(str(example / "recon.mp4"))
    try:
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
        ok, frame = video.read()
        assert ok and frame.shape == (144, 176, 3)  # written back at the clip's own size
    finally:
        video.release()


def test_documented_example_loads_weights_named_by_its_environment_variable(example, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("my_vae_doc_example", example / "my_vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.build()
    saved = {k: v + 1.0 for k, v in fresh.state_dict().items()}  # weights that differ from the seeded ones
    save_file(saved, str(tmp_path / "weights.safetensors"))
    monkeypatch.setenv("MY_VAE_WEIGHTS", str(tmp_path / "weights.safetensors"))
    loaded = module.build().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


BROKEN = {
    # a frame VAE without decode: the contract check names what is missing
    "no_decode": ("from my_vae import TinyVAE\n\n\nclass NoDecode(TinyVAE):\n    decode = None\n\n\n"
                  "def build():\n    return NoDecode()\n", "is a frame VAE without decode"),
    # a factory that raises (weights not found, say): its error, in one line
    "raises": ("def build():\n    raise FileNotFoundError('weights.safetensors')\n",
               "the factory raised FileNotFoundError: weights.safetensors"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_factory_is_one_error_line(example, case, monkeypatch, capsys):
    source, message = BROKEN[case]
    (example / "broken_vae.py").write_text(source, encoding="utf-8")
    # In this process (the same entry point, without a second torch start): PYTHONPATH=. is the folder on
    # sys.path, and the user's modules leave sys.modules with the test.
    monkeypatch.chdir(example)
    monkeypatch.syspath_prepend(str(example))
    for name in ("my_vae", "broken_vae"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        result = invoke_main(monkeypatch, capsys, "export", "--from", "broken_vae:build", "--out", "my_model")
    finally:
        for name in ("my_vae", "broken_vae"):
            sys.modules.pop(name, None)
    assert_one_line_error(result, message)
    assert not (example / "my_model").exists()
