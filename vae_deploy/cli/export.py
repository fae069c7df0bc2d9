"""`vae-deploy export RUN_DIR --out MODEL_DIR [--profile export/NAME.toml]`: checkpoint -> model folder.

Writes encoder.onnx, decoder.onnx, reference/ and manifest.json (with the parity report measured here),
prints the worst error per output, and exits 1 when parity fails (the folder is still written, so
`vae-deploy verify` can show the details).
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
        help="Export profile: a TOML file, or a name in export/ (cpu-fp32, gpu-fp16, jetson-orin-fp16)."
    )] = None,
    real: Annotated[int, typer.Option(
        "--real", help="Real test inputs for the parity check (0: random only).")] = 1000,
    data_source: Annotated[str, typer.Option("--data-source", help="MNIST source for real inputs.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="MNIST folder for real inputs.")] = None,
    parity_backend: Annotated[str, typer.Option(
        "--parity-backend", help="Backend the parity check runs.")] = "ort-cpu",
) -> None:
    """Export encoder and decoder to ONNX with a manifest and an export-time parity report."""
    from rich.console import Console
    from rich.table import Table

    from vae_deploy.cli.verify import parity_error, real_inputs_for
    from vae_deploy.export import export_model, load_profile
    from vae_deploy.models.checkpoint import read_config

    console = Console()
    chosen = load_profile(profile)
    kind = read_config(run_dir)["kind"]
    inputs = real_inputs_for(kind, real, data_source, data_dir)
    manifest, report = export_model(run_dir, out, chosen, real_inputs=inputs, parity_backend=parity_backend,
                                    log=lambda msg: console.print(msg, highlight=False))
    title = f"parity at export: {report.backend} vs {report.reference} ({report.precision}), worst case"
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
