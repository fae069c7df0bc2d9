"""The gpu-fp16 profile on external VAEs (issue 15): the fp16 graphs of a diffusers AutoencoderKL and of a
Wan-style causal VAE (four graphs, state carried between them) convert, pass the ONNX checker, and decode
the real clip's frames at >= 45 dB PSNR against the fp32 PyTorch reference, measured by the export-time
parity check on ONNX Runtime's CPU provider (the graphs are the ones a GPU backend would load).

Both are re-profiled from the shared zoo's fp32 exports (export/reprofile.py: the folder's graphs, the Wan
VAE's four kept in one shared weights.bin, are read back in and converted without tracing the model again;
the parity reference is the diffusers model rebuilt from the folder's reference/). The zoo exports are paid
for once per run by every test that reads them, so only the conversion and the parity check are this
test's own. Tracing followed by fp16 conversion in one export is tested on the MLP (conftest.py's
mlp_model_fp16_dir)."""

import json

import pytest
from external_zoo import EXPORT_REAL_FRAMES, WAN_GRAPHS, external_folder, external_model  # noqa: F401

from vae_deploy.export.jobs import export_job

DECODER_FLOOR_DB = 45.0  # the floor for fp16 decoders on real frames


@pytest.fixture
def source(request, external_model):  # noqa: F811 (fixture)
    """The zoo's fp32 model folder request.param (exported with --real EXPORT_REAL_FRAMES), found or exported
    in the test's setup. Read-only."""
    return external_model(request.param).model_dir


# Real frames decoded by the parity check: the AutoencoderKL decodes each frame alone, so the default 16 cost
# little; Wan's 5 are its smallest whole clip, 1 + 4 (the first-chunk graphs and one steady step), what the
# zoo's export used: the default 16 at 128 px triple the time of a Wan export on a 2-core machine.
@pytest.mark.parametrize(("source", "real", "graphs"), [
    ("kl-sd", 16, {"encoder", "decoder"}),
    pytest.param("wan2.1", EXPORT_REAL_FRAMES, WAN_GRAPHS, marks=pytest.mark.slow)],
    ids=["autoencoder-kl", "wan"], indirect=["source"])
def test_fp16_export_decodes_real_frames_above_the_floor(tmp_path, source, real, graphs):
    theirs = json.loads((source / "manifest.json").read_text())
    assert theirs["precision"] == "fp32" and set(theirs["graphs"]) == graphs  # what re-profiling starts from
    lines = []
    result = export_job(source, tmp_path / "m", profile="gpu-fp16", real=real, parity_backend="ort-cpu",
                        log=lines.append)
    assert result.report.passed, result.report.error()
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and set(manifest["graphs"]) == graphs
    # re-profiled: every graph taken from the folder, none traced
    assert [line for line in lines if line.startswith("reusing ")] == [
        f"reusing {name} from {source} (no tracing) -> {tmp_path / 'm' / theirs['graphs'][name]['file']}"
        for name in theirs["graphs"]]
    assert not any(line.startswith("exporting ") for line in lines), lines
    assert manifest["export_profile"]["reprofiled_from"]["folder"] == str(source)
    if len(graphs) == 4:
        assert "weights.bin" in manifest["files"]  # Wan's four graphs share their weights
    real = [c for c in manifest["parity"]["comparisons"]
            if c["case"] == "real" and c["graph"] == "decoder" and c["output"] == "video"]
    assert real, "the parity check decoded no real frames"
    assert all(c["psnr_db"] == "inf" or float(c["psnr_db"]) >= DECODER_FLOOR_DB for c in real), real
