"""`vae-deploy export RUN_DIR --out MODEL_DIR [--profile NAME] [--force] [--engine]`: checkpoint -> model
folder.

Writes encoder.onnx, decoder.onnx, reference/, golden.npz and manifest.json (with the parity report measured
here), prints the worst error per output, and exits 1 when parity fails (the folder is still written, so
`vae-deploy verify` can show the details). The folder is built under a temporary name beside MODEL_DIR and
swapped in when complete: a failed or interrupted export leaves the previous folder (or nothing). An
existing non-empty MODEL_DIR is refused unless --force. --engine also builds TensorRT engines
(export/tensorrt_build.py); where TensorRT is missing it stops before exporting, saying what to install and
which backends run here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer


def export(
    run_dir: Annotated[Path, typer.Argument(
        help="Checkpoint or training run folder (model.safetensors + config.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    profile: Annotated[str | None, typer.Option(
        "--profile",
        help="Export profile: a TOML file, or a name in export/ (cpu-fp32, cpu-int8, gpu-fp16, "
             "jetson-orin-fp16)."
    )] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing model folder at --out (its engines/ cache is kept).")] = False,
    real: Annotated[int, typer.Option(
        "--real", help="Real test inputs for the parity check: MNIST images, or frames of a sample clip "
                       "for video models (at most 16); 0: random only.")] = 1000,
    data_source: Annotated[str, typer.Option("--data-source", help="MNIST source for real inputs.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="MNIST folder for real inputs.")] = None,
    parity_backend: Annotated[str, typer.Option(
        "--parity-backend", help="Backend the parity check runs.")] = "ort-cpu",
    engine: Annotated[bool, typer.Option(
        "--engine", help="Also build TensorRT engines into MODEL_DIR/engines (TensorRT 10+, NVIDIA GPU); "
                         "engines cached under the same key are reused, stale ones rebuilt.")] = False,
    engine_precision: Annotated[str | None, typer.Option(
        "--engine-precision", help="Engine precision: fp32, fp16 or int8 (default: the profile's "
                                   "tensorrt.fp16).")] = None,
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="int8 engines of video models: a video file or image folder of real frames "
                              "(the MLP calibrates on its real MNIST test inputs).")] = None,
) -> None:
    """Export encoder and decoder to ONNX with a manifest and an export-time parity report."""
    from vae_deploy.cli.extras import train_extra
    from vae_deploy.export.publish import check_target

    check_target(out, overwrite=force)  # before any work: refusing later would waste the export
    with train_extra("export"):
        _export(run_dir, out, profile, force, real, data_source, data_dir, parity_backend, engine,
                engine_precision, calibration)


def _export(run_dir: Path, out: Path, profile: str | None, force: bool, real: int, data_source: str,
            data_dir: Path | None, parity_backend: str, engine: bool, engine_precision: str | None,
            calibration: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from vae_deploy.cli.verify import parity_error, real_inputs_for
    from vae_deploy.export import export_model, load_profile
    from vae_deploy.export.specs import graph_specs
    from vae_deploy.models import build_model
    from vae_deploy.models.checkpoint import read_config

    console = Console()
    if engine:  # before the export: a missing TensorRT should not cost an export first
        from vae_deploy.errors import ConfigError
        from vae_deploy.export.tensorrt_build import require_tensorrt

        if engine_precision not in (None, "fp32", "fp16", "int8"):
            raise ConfigError(f"--engine-precision must be fp32, fp16 or int8, got {engine_precision!r}")
        if calibration is not None:
            raise ConfigError("--calibration is no longer used: TensorRT int8 engines are built from an int8 "
                              "model folder's Q/DQ graphs, quantized at export")
        require_tensorrt()
    chosen = load_profile(profile)
    config = read_config(run_dir)
    model_config = build_model(config["kind"], config.get("model", {})).config
    encoder = graph_specs(config["kind"], model_config)["encoder"]
    inputs = real_inputs_for(config["kind"], real, data_source, data_dir, encoder)
    manifest, report = export_model(run_dir, out, chosen, real_inputs=inputs, parity_backend=parity_backend,
                                    log=lambda msg: console.print(msg, highlight=False), overwrite=force)
    title = (f"parity at export: {report.backend} vs {report.reference} ({report.precision}), "
             f"worst judged case")
    table = Table(title=title, title_justify="left")
    for column in ("output", "max abs", "max rel", "min PSNR dB"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for name, w in report.worst().items():
        psnr = "inf" if math.isinf(w["min_psnr_db"]) else f"{w['min_psnr_db']:.1f}"
        table.add_row(name, f"{w['max_abs']:.2e}", f"{w['max_rel']:.2e}", psnr)
    console.print(table)
    if not report.passed:
        raise parity_error(report)
    console.print(f"wrote {out} ({manifest.kind}, {manifest.precision}, opset {manifest.opset}, profile "
                  f"{chosen.name})", highlight=False)
    if engine:
        _build_engines(console, out, manifest, engine_precision, inputs, calibration)


def _build_engines(console, out: Path, manifest, precision: str | None, real_inputs, calibration) -> None:
    from rich.table import Table

    from vae_deploy.export.tensorrt_build import build_engines, describe

    # int8 engines come from the folder's Q/DQ graphs (export/tensorrt_build.py): nothing to calibrate.
    results = build_engines(out, precision, log=lambda msg: console.print(msg, highlight=False))
    table = Table(title=f"TensorRT engines in {out}/engines", title_justify="left")
    for column in ("graph", "precision", "file", "cached", "seconds"):
        table.add_column(column)
    for row in describe(results):
        table.add_row(*(str(row[c]) for c in ("graph", "precision", "file", "cached", "seconds")))
    console.print(table)
