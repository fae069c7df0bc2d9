"""One copy of the weights (issue 24 item 1) on the Wan 2.1 layout exported by `vae-deploy export` (the
session's external_model fixture, shared with the other Wan tests): the four graphs read their tensors from
one weights.bin, each tensor once; the manifest vouches for it; ONNX Runtime sessions share one buffer per
tensor; and a folder slimmed for a device (no reference/) verifies without torch."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import numpy as np
import onnx
import pytest
from cli_support import assert_one_line_error, invoke_main
from external_zoo import WAN_GRAPHS, external_folder, external_model  # noqa: F401 (pytest fixtures)
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from torch_free_support import edge_cli

from vae_deploy.export.shared_weights import WEIGHTS_FILE
from vae_deploy.runtime import load_runner
from vae_deploy.runtime.manifest import read_manifest
from vae_deploy.runtime.shared_initializers import WeightsFile

pytestmark = pytest.mark.slow  # every test reads the Wan 2.1 export


@pytest.fixture(scope="module")
def wan(external_model):  # noqa: F811 (the fixture imported above)
    return external_model("wan2.1").model_dir


def fp32_parameter_bytes(folder) -> int:
    """The model's parameters in fp32, from the reference checkpoint's safetensors header."""
    with open(folder / "reference" / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(4 * int(np.prod(v["shape"])) for k, v in header.items() if k != "__metadata__")


def test_each_weight_is_stored_once_in_one_shared_file(wan):
    manifest = read_manifest(wan)
    assert set(manifest.graphs) == WAN_GRAPHS and WEIGHTS_FILE in manifest.files  # hashed like the graphs
    spans, graphs_of, contents, inline = {}, defaultdict(set), defaultdict(set), 0
    blob = (wan / WEIGHTS_FILE).read_bytes()
    for spec in manifest.graphs.values():
        for tensor in onnx.load(str(wan / spec.file), load_external_data=False).graph.initializer:
            if not uses_external_data(tensor):
                inline += len(tensor.raw_data)
                continue
            info = ExternalDataInfo(tensor)
            assert info.location == WEIGHTS_FILE
            span = (int(info.offset), int(info.length))
            spans[span] = blob[span[0]:span[0] + span[1]]
            graphs_of[span].add(spec.name)
    for span, data in spans.items():
        contents[data].add(span)
    assert all(len(s) == 1 for s in contents.values())  # no content stored twice
    # the steady graphs and their first-chunk graphs read the same bytes
    assert any({"decoder", "decoder_first"} <= names for names in graphs_of.values())
    assert any({"encoder", "encoder_first"} <= names for names in graphs_of.values())
    # and the parts the whole graphs are joined from read those bytes too
    assert any({"decoder", "decoder_pixels", "decoder_pixels_first"} <= names for names in graphs_of.values())
    stored = len(blob) + inline  # every tensor byte of the folder's graphs
    assert stored <= 1.1 * fp32_parameter_bytes(wan), (stored, fp32_parameter_bytes(wan))


def test_the_sessions_share_one_buffer_per_tensor(wan):
    with load_runner(wan, "ort-cpu", threads=1) as runner:
        held = [getattr(s, "_vae_deploy_weights", []) for s in runner._sessions.values()]
        assert all(len(h) == 1 and isinstance(h[0], WeightsFile) for h in held)
        assert len({id(h[0]) for h in held}) == 1  # one mapping of weights.bin for the graphs loaded
        stream = runner.open_stream()
        rng = np.random.default_rng(0)
        video = rng.random((1, 5, 3, 32, 32), dtype=np.float32)
        mu = stream.step("encoder", video)["mu"]
        # the fp16 guard's fp32 graph is built from the file with its external data: self-contained bytes
        fallback = onnx.load_from_string(runner._fallback_source("decoder"))
        assert not any(uses_external_data(t) for t in fallback.graph.initializer)
    assert mu.shape[1] == 2 and np.isfinite(mu).all()


def test_a_tampered_weights_file_is_refused(wan, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "m"
    shutil.copytree(wan, folder)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    result = invoke_main(monkeypatch, capsys, "verify", folder, "--reference", "golden")
    assert_one_line_error(result, f"{WEIGHTS_FILE} does not match the manifest", code=2)


def test_a_slim_folder_verifies_without_torch_and_is_the_same_model(wan, tmp_path, monkeypatch, capsys):
    device = tmp_path / "device"
    made = edge_cli("slim", wan, "--out", device)  # slim and verify in processes where torch cannot load
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in device.iterdir()) == sorted(
        [f"{name}.onnx" for name in WAN_GRAPHS]
        + [WEIGHTS_FILE, "golden.npz", "manifest.json"])
    full, slim = read_manifest(wan), read_manifest(device)
    assert sorted(slim.removed_files) == ["reference/config.json", "reference/model.safetensors"]
    assert slim.fingerprint == full.fingerprint and slim.parity == full.parity
    checked = edge_cli("verify", device)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("reference: golden outputs stored at export")
    refused = invoke_main(monkeypatch, capsys, "verify", device, "--reference", "torch")
    assert_one_line_error(refused, "has no PyTorch reference (reference/: a slim folder)", code=2)
