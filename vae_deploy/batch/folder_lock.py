"""An exclusive lock on an output folder, held by one process at a time: `FolderLock(DIR, "another X")`.

The lock is an flock on DIR itself, not on a lock file inside it: a lock file would be one more thing in
DIR to leave behind (a batch that fails before its first video removes the folder it created, which only
works while it is empty) and to remove safely (unlinking a lock file while another process waits on it
lets a third lock a new file of the same name). The kernel drops the lock when its holder exits, however
it exits, so a killed batch never leaves a stale lock.

The holder's pid, for the message, comes from /proc/locks (Linux); elsewhere the message has no pid. Where
flock is missing (Windows) or a filesystem refuses it on folders (some network filesystems), no lock is
taken: the batch runs as it did before locks, which is safe for one batch at a time.
"""

from __future__ import annotations

import errno
import os
import weakref
from pathlib import Path

from vae_deploy.errors import VaeDeployError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_BUSY = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


def _holder_pid(fd: int) -> int | None:
    """The pid holding an flock on the file open at `fd`, from /proc/locks (None where unknown)."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 19521 fe:00:15089665 0 EOF" ("1: -> FLOCK ..." is a waiter)
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == device and parts[4].isdigit():
            return int(parts[4])
    return None


class FolderLock:
    def __init__(self, folder: Path, who: str):
        """Lock `folder` (it exists) or raise VaeDeployError: "`who` is writing to FOLDER (pid N)"."""
        self._fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder_pid(fd) if exc.errno in _BUSY else None
            os.close(fd)
            if exc.errno in _BUSY:
                raise VaeDeployError(f"{who} is writing to {folder}" + (f" (pid {pid})" if pid else "")
                                     + "; wait for it to finish or give another --out") from exc
            return  # a filesystem that cannot lock folders: run unlocked (see the module docstring)
        self._fd = fd
        # a holder dropped without close() (an exception's traceback keeps it alive a while) still unlocks
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            self._fd = None
            self._finalizer()  # closing the descriptor drops the lock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
