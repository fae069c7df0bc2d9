"""Atomic file output: every file is written to a temporary name beside its target and renamed when
complete, so an interrupted run leaves either the previous file or a complete new one.

Temporary names are unique per call (`.<stem>.<pid>-<random>.part<suffix>`, created with O_EXCL like
mkstemp), so two processes writing the same target never share a temporary file: each publishes a complete
file of its own and the last rename wins. A process killed outright (kill -9, the OOM killer) leaves its
temporary file; the next writer of the same target removes those whose writer (the pid in the name) is no
longer running on this machine, and nothing else (remove_stale_temporaries). Outputs get the usual
permissions (0666 less the umask), like any file the user creates. No third-party imports: usable from
every layer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from vae_deploy.errors import OutputError, VaeDeployError

_NAME_TRIES = 100
# errno values that say the output's folder takes no more bytes: every file written there fails alike
FOLDER_UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# errno values that say "this output cannot be written" (as opposed to a problem with an input); a file
# too large (EFBIG) is this file's problem alone
_WRITE_ERRNOS = FOLDER_UNWRITABLE_ERRNOS | {errno.EFBIG}


@contextlib.contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn a failed write inside the block (full disk, quota, read-only) into one OutputError naming
    `target`, the file the user asked for, rather than the temporary file the write went to."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise OutputError(f"cannot write {target}: {exc.strerror.lower()}") from exc
        raise


@contextlib.contextmanager
def removing_new_folders(path: Path) -> Iterator[Path]:
    """For a job that creates `path` (and missing parents): when the block fails or is interrupted, the
    folders it created are removed again while they are empty, so a failed job leaves no empty folder."""
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        yield path
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only succeeds while empty: what the job finished stays
            except OSError:
                break
        raise


def unwritten_cause(folder: Path) -> str:
    """Why a writer that reports no errno (OpenCV) may have failed: a full disk, or something else."""
    free = shutil.disk_usage(folder).free
    return "no space left on device" if free < 2**20 else f"the writer failed with {free // 2**20} MiB free"


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and check that files can be written in it."""
    path = Path(path)
    # The probe's name is known before it exists, so an interrupt (SIGTERM) landing between creating and
    # closing it still removes it: NamedTemporaryFile left one behind when a stop came inside its setup.
    # It carries the pid, so that one a process killed outright (kill -9) left is known as stale.
    probe = path / f".probe-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        remove_stale_probes(path)
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise VaeDeployError(f"cannot write to output folder {path}: {exc.strerror or exc}") from exc
    return path


_PROBE = re.compile(r"\.probe-(?P<pid>\d+)-[0-9a-f]{12}")  # ensure_writable_dir's probe file


def remove_stale_probes(folder: Path) -> None:
    """Remove the probe files of ensure_writable_dir in `folder` whose process is gone (killed outright
    between creating and removing one)."""
    def stale(name: str) -> bool:
        match = _PROBE.fullmatch(name)
        return bool(match) and not _running(int(match["pid"]))

    for probe in files_named(folder, stale):
        probe.unlink(missing_ok=True)


# .<stem>.<pid>-<12 hex>.part<suffix>: the temporary name AtomicFile gives a target <stem><suffix>
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)-[0-9a-f]{12}\.part(?P<suffix>\.[^.]*)?")


def _running(pid: int) -> bool:
    """Whether process `pid` exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def files_named(folder: Path, wanted: Callable[[str], bool]) -> list[Path]:
    """The regular files (not links) directly in `folder` whose name `wanted` accepts; none when the folder
    cannot be read."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return [Path(entry.path) for entry in entries
            if wanted(entry.name) and entry.is_file(follow_symlinks=False)]


def stale_temporaries(folder: Path, names: set[str]) -> list[Path]:
    """The temporary files in `folder` of targets named `names` whose writing process is gone."""

    def stale(name: str) -> bool:
        match = _TEMPORARY.fullmatch(name)
        return bool(match) and match["stem"] + (match["suffix"] or "") in names \
            and not _running(int(match["pid"]))

    return files_named(folder, stale)


def remove_stale_temporaries(folder: Path, names: set[str]) -> None:
    for path in stale_temporaries(folder, names):
        path.unlink(missing_ok=True)


class AtomicFile:
    """A fresh temporary file beside `target`: `publish()` renames it onto the target, `discard()` removes
    it. For writers that cannot run inside one `with atomic_path(...)` block (streams closed later)."""

    def __init__(self, target: Path):
        self.target = Path(target)
        folder = ensure_writable_dir(self.target.parent)
        # A hidden target is itself a staging name, unique to its writer: no earlier writer left anything
        # of it, and its folder (a batch's, of many files) is not listed once per file.
        if not self.target.name.startswith("."):
            remove_stale_temporaries(folder, {self.target.name})
        self.tmp, self._mode = _create_unique(folder, f".{self.target.stem}.{os.getpid()}-",
                                              f".part{self.target.suffix}")
        self._done = False

    def publish(self) -> None:
        if self._done:
            return
        # Some writers replace the file they are given (safetensors writes its own temporary file and
        # renames it over ours, with mode 0600): put back the mode the kernel gave our file.
        if stat.S_IMODE(os.stat(self.tmp).st_mode) != self._mode:
            os.chmod(self.tmp, self._mode)
        os.replace(self.tmp, self.target)
        self._done = True

    def discard(self) -> None:
        if not self._done:
            self._done = True
            self.tmp.unlink(missing_ok=True)


def _create_unique(folder: Path, prefix: str, suffix: str) -> tuple[Path, int]:
    """Create an empty file of a name no other caller gets; (its path, the mode the kernel gave it).

    Created with mode 0666 so the kernel applies the umask: the process umask is never read (reading it
    means setting it, which races with other threads creating files)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_NAME_TRIES):
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return path, mode
    raise VaeDeployError(f"cannot create a temporary file in {folder}: every name tried exists")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` only if the block succeeds.

    For writers that insist on a file name (OpenCV, torch.onnx, matplotlib, safetensors). The temporary
    name keeps the target's suffix because some writers pick the format from it.
    """
    out = AtomicFile(target)
    try:
        with writing(target):
            yield out.tmp
            out.publish()
    finally:
        out.discard()


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text_atomic(target: Path, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: Path, obj: object) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
