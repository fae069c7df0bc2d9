"""`export` and `verify` as functions (export/jobs.py), what the CLI commands call: usable without the CLI,
the same results, the parity table's hook called once the folder is written."""

from __future__ import annotations

import pytest

from vae_deploy.errors import ConfigError, ParityError
from vae_deploy.export.jobs import export_job, verify_job
from vae_deploy.runtime import read_manifest


@pytest.fixture(scope="module")
def exported(mlp_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "model"
    events = []
    result = export_job(mlp_checkpoint, out, profile="cpu-fp32", real=0, log=events.append,
                        on_exported=lambda r: events.append(("exported", r)))
    return out, result, events


def test_export_job_writes_the_folder_and_reports_before_returning(exported):
    out, result, events = exported
    assert result.report.passed and result.profile == "cpu-fp32" and result.engines is None
    assert events[-1] == ("exported", result)  # once, after every step was logged
    assert sum(1 for e in events if isinstance(e, tuple)) == 1
    assert any(str(e).startswith("checking parity: ort-cpu vs torch") for e in events[:-1])
    manifest = read_manifest(out)
    assert manifest.fingerprint == result.manifest.fingerprint and manifest.parity["passed"]
    assert manifest.export_profile["name"] == "cpu-fp32"


def test_export_job_refuses_an_existing_folder_before_any_work(exported, mlp_checkpoint):
    out, _, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    called = []
    with pytest.raises(ConfigError, match="--force"):
        export_job(mlp_checkpoint, out, real=0, log=called.append, on_exported=called.append)
    assert called == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_verify_job_against_torch_and_against_the_golden_outputs(exported):
    out, _, _ = exported
    live = verify_job(out, real=0, batch_sizes=(3,), seed=1)
    assert live.reference == "torch" and live.note.startswith("reference: PyTorch")
    assert live.report.passed and live.report.backend == "ort-cpu" and live.report.reference == "torch"
    assert {c.batch for c in live.report.comparisons} == {3}
    stored = verify_job(out, reference="golden")
    assert stored.reference == "golden" and stored.note.endswith("(--reference golden)")
    assert stored.report.passed and stored.report.reference == "golden"


def test_a_failed_report_becomes_one_parity_error(exported):
    out, _, _ = exported
    report = verify_job(out, real=0, batch_sizes=(2,)).report
    report.comparisons[0].passed = False  # the verdict of one comparison, as a failing backend gives it
    error = report.error()
    assert isinstance(error, ParityError) and error.exit_code == 1
    c = report.comparisons[0]
    assert str(error).startswith(f"parity failed: 1 of {len(report.comparisons)} comparisons over tolerance "
                                 f"(worst {c.graph}/{c.output}, random batch 2:")
