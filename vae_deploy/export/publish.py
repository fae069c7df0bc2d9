"""Writing a model folder as one unit: built under a temporary name beside the target, swapped in at the end.

A model folder is several files vouched for by one manifest, so writing them in place (even each one
atomically) would leave, after an interruption, new graphs beside the old manifest and the old model
gone. `staged_folder` instead hands out an empty folder with a name unique to the call
(`.<name>.<random>` in the target's parent), and only when the block succeeds moves an existing target
aside, renames the new folder into place and removes the old one. On any failure or interrupt the
temporary folder is removed (and parent folders it created), and the target is left as it was.

Torch-free: used by export (onnx_export.py) and scripts/make_default_model.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from vae_deploy.errors import ConfigError, OutputError, VaeDeployError
from vae_deploy.files import removing_new_folders
from vae_deploy.runtime.manifest import MANIFEST_FILE

_NAME_TRIES = 100


def check_target(target: Path, overwrite: bool = True) -> None:
    """Refuse a target export must not replace: a file; a non-empty folder unless `overwrite`; and, even
    with `overwrite`, a non-empty folder that is not a model folder (no manifest.json), so a mistyped --out
    never deletes unrelated files."""
    target = Path(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigError(f"{target} exists and is not a folder")
    if not any(target.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{target} already exists and is not empty: pass --force to replace it")
    if not (target / MANIFEST_FILE).is_file():
        raise ConfigError(f"{target} is not a model folder (it has files but no {MANIFEST_FILE}): refusing "
                          f"to replace it; choose another output folder")


def check_apart(model_dir: Path, out: Path, what: str) -> None:
    """Refuse an --out that is the model folder a command reads (`slim`, a re-profiling `export`), lies
    inside it or holds it: publishing there would replace or change the folder being read. `what` names
    the folder being written ("the slim folder")."""
    source, target = Path(model_dir).resolve(), Path(out).resolve()
    if target == source or source in target.parents:
        raise ConfigError(f"--out {out} is {'the model folder' if target == source else 'inside it'}: write "
                          f"{what} somewhere else")
    if target in source.parents:
        raise ConfigError(f"--out {out} holds the model folder {model_dir}: write {what} somewhere else")


def _unique_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder no other caller gets; mode 0777 less the umask, like any folder the user makes."""
    for _ in range(_NAME_TRIES):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise VaeDeployError(f"cannot create a temporary folder in {parent}")


def swap_in(new: Path, target: Path, carry: tuple[str, ...] = ()) -> None:
    """Rename the folder `new` onto `target`. An existing target is first moved aside (to a unique name
    beside it) and removed last; entries named in `carry` (e.g. engines/, a cache keyed by content) move
    from the old folder into the new one when the new one has none. If the final rename fails, the old
    folder is put back."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    aside = _unique_dir(target.parent, f".{target.name}.old.")
    old = aside / target.name
    os.rename(target, old)
    moved = []
    try:
        for name in carry:
            if (old / name).exists() and not (new / name).exists():
                os.rename(old / name, new / name)
                moved.append(name)
        os.rename(new, target)
    except BaseException:
        for name in moved:
            os.rename(new / name, old / name)
        os.rename(old, target)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(target: Path, overwrite: bool = True, carry: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; when the block succeeds, swap it in (`swap_in`).

    `overwrite` False refuses an existing non-empty target (check_target, checked before and again at the
    swap). On an exception or interrupt nothing is left behind: no temporary folder, and no empty target or
    parent folder that was not there before.
    """
    target = Path(target)
    check_target(target, overwrite)
    parent = target.parent
    with removing_new_folders(parent):  # a failed export leaves no parent folder it created
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = _unique_dir(parent, f".{target.name}.")
        except OSError as exc:
            raise VaeDeployError(f"cannot write to output folder {parent}: {exc.strerror or exc}") from exc
        try:
            yield staging
            check_target(target, overwrite)  # something may have appeared there meanwhile
            swap_in(staging, target, carry)
        except OutputError as exc:
            # A write into the staging folder failed (a full disk): name the file as the user knows it.
            raise OutputError(str(exc).replace(str(staging), str(target))) from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
