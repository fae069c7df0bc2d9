"""`vae-deploy export SOURCE --out MODEL_DIR [--profile NAME] [--force] [--engine]`: a model -> model folder.

SOURCE is a training run (or checkpoint) folder or a local diffusers model folder; `--from
package.module:factory` instead of SOURCE takes any module keeping the adapter contract (export/sources.py).
SOURCE may also be an fp32 model folder export wrote: it is re-profiled (fp32 -> fp16 or int8, say) from its
own graphs and reference/, without tracing the model again (export/reprofile.py); it is only read.

Writes encoder.onnx, decoder.onnx, reference/, golden.npz and manifest.json (with the parity report measured
here), prints the worst error per output, and exits 1 when parity fails (the folder is still written, so
`vae-deploy verify` can show the details). The folder is built under a temporary name beside MODEL_DIR and
swapped in when complete: a failed or interrupted export leaves the previous folder (or nothing). An
existing non-empty MODEL_DIR is refused unless --force. --engine also builds TensorRT engines
(export/tensorrt_build.py); where TensorRT is missing it stops before exporting, saying what to install and
which backends run here. The work is export/jobs.py's export_job; this module parses the options and prints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import ParityBackendOption
from vae_deploy.errors import ConfigError
from vae_deploy.models.families import family_names  # torch-free: the help lists the table itself
from vae_deploy.runtime.registry import DEFAULT_BACKEND


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    source: Annotated[Path | None, typer.Argument(
        help="What to export: a training run or checkpoint folder (model.safetensors + config.json), a "
             f"local diffusers model folder ({family_names()}; a pipeline folder's vae/ is found too), or "
             "an fp32 model folder to re-profile without tracing (its graphs and reference/ are reused).",
        show_default=False)] = None,
    entry_point: Annotated[str | None, typer.Option(
        "--from", help="Instead of SOURCE: package.module:factory returning a torch module that keeps the "
                       "adapter contract (docs/adapters.md).")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile",
        help="Export profile: the name of a packaged one (cpu-fp32, cpu-int8, gpu-fp16, jetson-orin-fp16) "
             "or a TOML file."
    )] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing model folder at --out (its engines/ cache is kept).")] = False,
    real: Annotated[int, typer.Option(
        "--real", help="Real test inputs for the parity check: MNIST images, or frames of a sample clip "
                       "for video models (at most 16); 0: random only.")] = 1000,
    data_source: Annotated[str, typer.Option("--data-source", help="MNIST source for real inputs.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="MNIST folder for real inputs.")] = None,
    parity_backend: ParityBackendOption = DEFAULT_BACKEND,
    engine: Annotated[bool, typer.Option(
        "--engine", help="Also build TensorRT engines into MODEL_DIR/engines (TensorRT 10.x or 11.x, NVIDIA "
                         "GPU); engines cached under the same key are reused, stale ones rebuilt.")] = False,
    engine_precision: Annotated[str | None, typer.Option(
        "--engine-precision", help="Engine precision: fp32, fp16 or int8 (default: fp16 where the profile "
                                   "sets tensorrt.fp16, else fp32).")] = None,
) -> None:
    """Export encoder and decoder to ONNX with a manifest and an export-time parity report."""
    from rich.console import Console

    from vae_deploy.cli.extras import train_extra
    from vae_deploy.export.jobs import export_job

    console = Console()
    with train_extra("export"), _no_exit_from_user_code():
        result = export_job(source, out, profile=profile, entry_point=entry_point, real=real,
                            data_source=data_source, data_dir=data_dir,
                            parity_backend=parity_backend, force=force, engine=engine,
                            engine_precision=engine_precision,
                            # one line per step whatever the path's length (a log read by tools)
                            log=lambda msg: console.print(msg, highlight=False, soft_wrap=True),
                            on_exported=lambda exported: _print_parity(console, out, exported))
    if not result.report.passed:
        raise result.report.error()
    if result.engines is not None:
        _print_engines(console, out, result.engines)


@contextlib.contextmanager
def _no_exit_from_user_code():
    """A --from module that calls sys.exit() while being traced or checked must fail the export, not end
    it with its own exit code (0 would read as success) after the staged folder was dropped."""
    try:
        yield
    except SystemExit as exc:
        raise ConfigError(f"the model's code called sys.exit({exc.code!r}) during the export; nothing was "
                          f"written") from None


def _print_parity(console, out: Path, result) -> None:
    """The worst judged error per output, and the folder written when parity passed (before any engine is
    built: building takes minutes)."""
    from rich.table import Table

    report, manifest = result.report, result.manifest
    title = (f"parity at export: {report.backend} vs {report.reference} ({report.precision}), "
             f"worst judged case")
    table = Table(title=title, title_justify="left")
    for column in ("output", "max abs", "max rel", "min PSNR dB"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for name, w in report.worst(report.merged()).items():
        table.add_row(name, f"{w['max_abs']:.2e}", f"{w['max_rel']:.2e}", f"{w['min_psnr_db']:.1f}")
    console.print(table)
    if report.passed:
        console.print(f"wrote {out} ({manifest.kind}, {manifest.precision}, opset {manifest.opset}, profile "
                      f"{result.profile})", highlight=False, soft_wrap=True)


def _print_engines(console, out: Path, engines) -> None:
    from rich.table import Table

    from vae_deploy.export.tensorrt_build import describe

    table = Table(title=f"TensorRT engines in {out}/engines", title_justify="left")
    for column in ("graph", "precision", "file", "cached", "seconds"):
        table.add_column(column)
    for row in describe(engines):
        table.add_row(*(str(row[c]) for c in ("graph", "precision", "file", "cached", "seconds")))
    console.print(table)
