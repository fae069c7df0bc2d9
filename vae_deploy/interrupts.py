"""Stop signals as interrupts: SIGTERM (what `docker stop`, systemd and Kubernetes send) stops a command the
way Ctrl-C does, so every long job keeps what it finished and removes its temporary files.

Python turns SIGINT into KeyboardInterrupt in the main thread; `install_sigterm_handler` makes SIGTERM raise
`Terminated`, a KeyboardInterrupt, at the same place, so every `except KeyboardInterrupt` that keeps finished
work handles both. The exit code then follows the shell's rule, 128 + the signal number: 130 for Ctrl-C,
143 for SIGTERM.

This module sits below every layer (no imports from the package).
"""

from __future__ import annotations

import signal
import threading

_stop_signal: int | None = None  # the SIGTERM received, if any; Ctrl-C leaves it None


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives."""


def _on_sigterm(signum: int, frame) -> None:
    global _stop_signal
    if _stop_signal is not None:
        return  # already stopping: a second SIGTERM must not cut the cleanup of the first short
    _stop_signal = signum
    raise Terminated()


def install_sigterm_handler() -> None:
    """Make SIGTERM raise Terminated in the main thread (a no-op outside it, where signals cannot be set)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def exit_code() -> int:
    """128 + the stopping signal: 143 after SIGTERM, 130 after Ctrl-C."""
    return 128 + (_stop_signal or signal.SIGINT)


def stop_word() -> str:
    """How the stop is reported: "terminated (SIGTERM)" or "interrupted"."""
    return "terminated (SIGTERM)" if _stop_signal is not None else "interrupted"
