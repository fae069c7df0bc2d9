"""A model folder for a device: `vae-deploy slim MODEL_DIR --out DIR` copies a checked model folder without
its PyTorch reference (reference/), keeping everything the ONNX backends and a torch-free `verify` read:
the graphs, their shared weights (weights.bin), golden.npz and a manifest vouching for exactly those files.

Why a command and not an export option: a Wan export takes minutes (ten at full width), and the folder that
was exported is the one whose parity was checked; slimming that folder keeps what was measured, and runs on
an edge install (no torch). Optimum and Polygraphy likewise keep exporting and trimming/inspecting a model
as separate steps.

The slim manifest moves the reference's entries from `files` to `removed_files`: the fingerprint covers
both, so the slim folder is the same model (latents encoded with one decode with the other), and its
parity report is the one measured at export. The folder is written like an export (export/publish.py):
built beside DIR and swapped in when complete; an existing DIR is replaced only with `force` and only when
it is a model folder; the source folder is only read. TensorRT engines (engines/) are not copied: they are
built for one GPU, on the device.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from vae_deploy.errors import ModelFormatError
from vae_deploy.export.golden import GOLDEN_FILE, has_golden
from vae_deploy.export.publish import check_apart, staged_folder
from vae_deploy.files import writing
from vae_deploy.runtime.manifest import (
    MANIFEST_FILE,
    Manifest,
    is_reference_file,
    read_manifest,
    write_manifest,
)


@dataclass(frozen=True)
class SlimResult:
    manifest: Manifest
    kept_bytes: int
    removed_bytes: int


def slim_folder(model_dir: Path, out: Path, force: bool = False) -> SlimResult:
    """Copy the model folder `model_dir` to `out` without reference/ (module docstring)."""
    model_dir, out = Path(model_dir), Path(out)
    check_apart(model_dir, out, "the slim folder")
    manifest = read_manifest(model_dir)  # every file's sha256 checked: a tampered folder is not copied
    if not has_golden(manifest):
        raise ModelFormatError(f"{model_dir} has no golden outputs ({GOLDEN_FILE}), so without its PyTorch "
                               f"reference nothing could verify it: re-export it with this version")
    kept = {name: digest for name, digest in manifest.files.items() if not is_reference_file(name)}
    removed = {name: digest for name, digest in manifest.files.items() if is_reference_file(name)}
    slim = replace(manifest, files=kept, removed_files={**manifest.removed_files, **removed})
    with staged_folder(out, overwrite=force) as work:
        for name in kept:
            target = work / name
            with writing(out / name):  # a full disk: one OutputError naming the file as the user knows it
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(model_dir / name, target)
        write_manifest(work, slim)
        read_manifest(work)  # the copy checks against its own manifest before it is published
    kept_bytes = sum((out / name).stat().st_size for name in kept) + (out / MANIFEST_FILE).stat().st_size
    removed_bytes = sum((model_dir / name).stat().st_size for name in removed)
    return SlimResult(slim, kept_bytes, removed_bytes)
