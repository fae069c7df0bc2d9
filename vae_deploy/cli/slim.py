"""`vae-deploy slim MODEL_DIR --out DIR [--force]`: a model folder for a device, without the torch reference.

Copies the graphs, their shared weights, golden.npz and a manifest vouching for exactly those (export/
slim.py): `run`, `encode`, `decode` and `verify` (against the golden outputs) work on it without torch, and
latents encoded with either folder decode with the other. Torch-free. The work is export/slim.py's
slim_folder; this module parses the options and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def slim(
    model_dir: Annotated[Path, typer.Argument(help="Model folder `vae-deploy export` wrote.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Slim model folder to write.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing model folder at --out.")] = False,
) -> None:
    """Write a copy of a model folder without reference/ (the PyTorch checkpoint), for a device."""
    from vae_deploy.export.slim import slim_folder

    result = slim_folder(model_dir, out, force=force)
    removed = ", ".join(sorted(result.manifest.removed_files))
    typer.echo(f"wrote {out}: {len(result.manifest.files)} files, {result.kept_bytes / 1e6:.1f} MB "
               f"({result.removed_bytes / 1e6:.1f} MB left out: {removed}); "
               f"`vae-deploy verify {out}` checks it against its golden outputs")
