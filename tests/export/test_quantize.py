"""int8 export (export/cpu-int8.toml, export/quantize.py): the packaged default model's checkpoint, quantized
by ONNX Runtime's static quantization and calibrated on real frames, keeps its graphs' contract, runs on
ort-cpu and stays within the int8 parity rule on real frames of a clip it was not calibrated on."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_support import cli_process as cli

from vae_deploy.errors import ConfigError
from vae_deploy.export import export_model, load_profile
from vae_deploy.export.golden import read_golden
from vae_deploy.export.real_inputs import real_inputs_for
from vae_deploy.export.validate import Comparison, check_golden, check_parity
from vae_deploy.runtime import read_manifest
from vae_deploy.runtime.registry import get_backend
from vae_deploy.video.default_model import DEFAULT_MODEL_DIR
from vae_deploy.video.samples import sample_video_path

ROOT = Path(__file__).parents[2]
INT8 = ROOT / "export" / "cpu-int8.toml"

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(),
                                reason="no default model packaged (scripts/make_default_model.py)")


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """`vae-deploy export DEFAULT/reference --profile cpu-int8` as a user runs it (the profile by name, from
    the checkout's export/ folder); returns the folder, its manifest, the parity report and the real clip."""
    out = tmp_path_factory.mktemp("int8") / "model"
    result = cli("export", DEFAULT_MODEL_DIR / "reference", "--out", out, "--profile", "cpu-int8", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "calibrating int8 on 64 frames of bikes, bigbuckbunny" in result.stdout
    manifest = read_manifest(out)
    numbers = ("max_abs", "max_rel", "psnr_db")  # JSON keeps infinities as strings
    report = [Comparison(**{k: float(v) if k in numbers else v for k, v in c.items()})
              for c in manifest.parity["comparisons"]]
    real = real_inputs_for("temporal", 16, "auto", None, manifest.graph("encoder"))  # what export used
    return out, manifest, report, real


def _conv_weight_types(path: Path) -> set[int]:
    """Element types of the initializers behind every Conv weight (through its DequantizeLinear)."""
    graph = onnx.load(str(path)).graph
    initializers = {i.name: i.data_type for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    types = set()
    for node in graph.node:
        if node.op_type == "Conv":
            weight = producers.get(node.input[1])
            assert weight is not None and weight.op_type == "DequantizeLinear", node.name
            types.add(initializers[weight.input[0]])
    return types


def test_int8_export_quantizes_every_conv_and_keeps_the_contract(int8_export):
    out, manifest, _, _ = int8_export
    assert manifest.precision == "int8" and manifest.parity["passed"]
    fp32 = read_manifest(DEFAULT_MODEL_DIR)
    for name in ("encoder", "decoder"):
        assert _conv_weight_types(out / manifest.graph(name).file) == {onnx.TensorProto.INT8}
        mine, theirs = manifest.graph(name), fp32.graph(name)
        assert [t.name for t in mine.all_inputs] == [t.name for t in theirs.all_inputs]
        assert [t.shape for t in mine.all_outputs] == [t.shape for t in theirs.all_outputs]
        assert mine.tolerance.min_psnr_db == 35.0
    assert (out / "encoder.onnx").stat().st_size < 0.5 * (DEFAULT_MODEL_DIR / "encoder.onnx").stat().st_size


def test_int8_parity_is_judged_on_real_frames_and_reports_the_rest(int8_export):
    _, _, report, _ = int8_export
    assert all(c.passed for c in report), [c for c in report if not c.passed]
    real = [c for c in report if c.case == "real"]
    assert {(c.graph, c.output) for c in real} >= {("encoder", "mu"), ("decoder", "video")}
    assert all(c.limit == "psnr>=35dB" and c.psnr_db >= 35.0 for c in real)
    others = [c for c in report if c.case != "real"]
    assert others and all(c.limit == "reported" for c in others)
    # the worst-case summary (manifest, export's table) covers the judged cases only
    worst = int8_export[1].parity["worst"]
    assert worst["decoder/video"]["min_psnr_db"] == min(c.psnr_db for c in real if c.output == "video")
    # int8 is not fp32: the frames differ, by a few hundredths at most on average
    video = next(c for c in real if c.output == "video")
    assert 0 < video.max_abs and video.psnr_db < 60


def test_int8_model_streams_like_its_own_whole_clip_call(int8_export):
    """The streaming contract holds inside the int8 graphs too: chunks of 4 with the state carried give
    what one call over the clip gives, to fp32 rounding (the state inputs feed no quantized op)."""
    out, _, _, real = int8_export
    with get_backend("ort-cpu")(out, threads=1) as runner:
        mu = runner.encode(real)[0]
        whole = runner.decode(mu)
        stream = runner.open_stream()
        parts = [stream.decode(mu[:, i:i + 4]) for i in range(0, mu.shape[1], 4)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5, rtol=0)


def test_int8_needs_real_inputs_and_a_video_model(int8_export, mlp_checkpoint, tmp_path):
    out, manifest, _, _ = int8_export
    with get_backend("ort-cpu")(out) as runner, get_backend("torch")(out) as reference:
        with pytest.raises(ConfigError, match="int8 graphs are judged on real inputs only"):
            check_parity(runner, reference, None)
    with pytest.raises(ConfigError, match="int8 export calibrates on video frames; a 'mlp' model"):
        export_model(mlp_checkpoint, tmp_path / "mlp-int8", load_profile(INT8))
    with pytest.raises(ConfigError, match="int8 graphs are judged on real inputs only"):
        export_model(DEFAULT_MODEL_DIR / "reference", tmp_path / "no-real", load_profile(INT8))
    assert not (tmp_path / "mlp-int8").exists() and not (tmp_path / "no-real").exists()  # refused up front


def test_int8_model_runs_the_pipeline_within_half_a_db_of_fp32(int8_export, tmp_path):
    """`vae-deploy run` streams the int8 folder like any model; on the held-out clip it loses little."""
    out = int8_export[0]
    psnr = {}
    for name, model in (("int8", out), ("fp32", DEFAULT_MODEL_DIR)):
        metrics = tmp_path / f"{name}.json"
        clip = sample_video_path("carphone_pristine")
        result = cli("run", clip, "--model", model, "--metrics", metrics, "-q")
        assert result.returncode == 0, result.stderr
        psnr[name] = json.loads(metrics.read_text())["psnr"]
    assert psnr["fp32"] - 0.5 <= psnr["int8"] < psnr["fp32"]


def _activation_scales(path: Path) -> dict[str, float]:
    """Scale of every QuantizeLinear of an activation (weights are stored quantized, without one)."""
    graph = onnx.load(str(path)).graph
    initializers = {i.name: i for i in graph.initializer}
    return {node.input[0]: float(onnx.numpy_helper.to_array(initializers[node.input[1]]))
            for node in graph.node if node.op_type == "QuantizeLinear"}


def test_averaged_ranges_are_never_wider_than_the_extremes(int8_export, tmp_path):
    """quantization.average_ranges (the profile's choice) takes the mean of each calibration chunk's min and
    max; with it off, the extremes over all chunks: the same activations, each range no wider, most
    narrower."""
    out, manifest, _, real = int8_export
    profile = load_profile(INT8)
    extremes = dataclasses.replace(profile, quantization=dataclasses.replace(profile.quantization,
                                                                            average_ranges=False))
    assert profile.quantization.average_ranges
    export_model(DEFAULT_MODEL_DIR / "reference", tmp_path / "extremes", extremes, real_inputs=real)
    for name in ("encoder", "decoder"):
        averaged = _activation_scales(out / manifest.graph(name).file)
        widest = _activation_scales(tmp_path / "extremes" / manifest.graph(name).file)
        assert averaged.keys() == widest.keys() and len(averaged) > 10
        assert all(averaged[k] <= widest[k] * (1 + 1e-6) for k in averaged)
        assert sum(averaged[k] < 0.99 * widest[k] for k in averaged) > len(averaged) // 2


def test_int8_golden_check_judges_the_stored_real_frames(int8_export):
    """Without torch, `verify` judges an int8 folder against its golden data by the same rule: PSNR on the
    stored real frames, the random and stream cases reported."""
    out, manifest, _, _ = int8_export
    with get_backend("ort-cpu")(out, threads=1) as runner:
        report = check_golden(runner, read_golden(out, manifest))
    assert report.passed and report.reference == "golden" and report.precision == "int8"
    real = [c for c in report.comparisons if c.case == "real"]
    assert {(c.graph, c.output) for c in real} >= {("encoder", "mu"), ("decoder", "video")}
    assert all(c.limit == "psnr>=35dB" and c.psnr_db >= 35.0 for c in real)
    assert all(c.limit == "reported" for c in report.comparisons if c.case != "real")
