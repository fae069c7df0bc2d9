"""`vae-deploy verify MODEL_DIR [--backend NAME] [--reference auto|torch|golden] [--json]`: parity of a
backend against the PyTorch reference.

Runs the backend and the reference (the folder's reference/ checkpoint) on real test inputs and on random
inputs at several batch sizes, prints one table per output (max abs error, max rel error, PSNR) and exits 1
when any comparison is over tolerance. Where PyTorch is not installed (the edge install), the reference is
the golden outputs stored in the folder at export (golden.npz, export/golden.py), judged by the same rules;
the first line says which reference was used. Writes nothing; --json prints the report to stdout instead.
The work is export/jobs.py's verify_job; this module parses the options and prints the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import BackendOption, parse_sizes
from vae_deploy.runtime.registry import DEFAULT_BACKEND


def _fmt(value: float, kind: str) -> str:
    if kind == "db":
        return f"{value:.1f}"  # inf, or -inf for NaN or inf outputs (export/validate.py compare)
    return f"{value:.2e}"


def print_report(report) -> None:
    """One table per output: rows are the input cases."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    outputs: dict[str, list] = {}
    for c in report.merged():  # a model's state tensors in one table (present_*)
        outputs.setdefault(f"{c.graph}/{c.output}", []).append(c)
    for name, rows in outputs.items():
        table = Table(title=f"{name}: {report.backend} vs {report.reference} ({report.precision})",
                      title_justify="left")
        streams = any(c.chunk for c in rows)  # the chunk column only where a stream was checked
        columns = ("inputs", "batch", "chunk", "max abs", "max rel", "PSNR dB", "limit", "")
        for column in columns:
            if column != "chunk" or streams:
                table.add_column(column, justify="left" if column in ("inputs", "limit") else "right")
        for c in rows:
            cells = [c.case, str(c.batch), str(c.chunk or "-"), _fmt(c.max_abs, "e"), _fmt(c.max_rel, "e"),
                     _fmt(c.psnr_db, "db"), c.limit, "[green]ok[/]" if c.passed else "[red]FAIL[/]"]
            table.add_row(*(cell for column, cell in zip(columns, cells, strict=True)
                            if column != "chunk" or streams))
        console.print(table)


def verify(
    model_dir: Annotated[Path, typer.Argument(help="Model folder (manifest.json, encoder/decoder.onnx).")],
    backend: BackendOption = DEFAULT_BACKEND,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON instead of tables.")] = False,
    reference: Annotated[str, typer.Option(
        "--reference", help="What the backend is compared with: torch (the PyTorch model in reference/), "
                            "golden (outputs stored at export; the inputs are the stored ones, so --real, "
                            "--batch-sizes and --seed do not apply), or auto: torch where it is installed, "
                            "else golden.")] = "auto",
    batch_sizes: Annotated[str | None, typer.Option(
        "--batch-sizes",
        help="Random-input batch sizes, e.g. 1,7,128,1000 (default: the export profile's).")] = None,
    real: Annotated[int, typer.Option("--real", help="Real test inputs to check (0: random only).")] = 1000,
    data_source: Annotated[str, typer.Option("--data-source", help="MNIST source for real inputs.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="MNIST folder for real inputs.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    entry_point: Annotated[str | None, typer.Option(
        "--from", help="For a model exported with --from: the package.module:factory it was exported with, "
                       "which builds its PyTorch reference. A model folder never picks code to import: "
                       "without this, such a model is verified against its golden outputs.")] = None,
) -> None:
    """Compare a backend with the PyTorch reference (or, without torch, with the outputs stored at export);
    exit 1 when parity fails."""
    from vae_deploy.export.jobs import verify_job
    from vae_deploy.runtime.manifest import json_safe

    result = verify_job(model_dir, backend=backend, reference=reference,
                        batch_sizes=parse_sizes(batch_sizes, "--batch-sizes"), real=real,
                        data_source=data_source, data_dir=data_dir, seed=seed, entry_point=entry_point)
    report = result.report
    if json_out:
        typer.echo(json.dumps(json_safe(report.to_dict()), indent=2))
    else:
        typer.echo(result.note)
        print_report(report)
    if not report.passed:
        raise report.error()
    if not json_out:
        typer.echo(f"parity ok: {len(report.comparisons)} comparisons within tolerance")
