"""One daemon per state directory: an flock on `<dir>/lock`, held while the daemon runs.

The CLI (`flota up --local`) asks the same lock whether a coordinator already runs
there, so this is a contract between the daemons and the CLI, like the files in it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StateLocked", "acquire", "holder"]


class StateLocked(Exception):
    """Another live process holds this state directory."""


def acquire(directory: Path, what: str) -> int:
    """Lock `directory` for this process (the lock lasts as long as the returned fd)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise StateLocked(f"another {what} already runs on {directory} (pid {pid or '?'})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def holder(directory: Path) -> int:
    """The pid holding the lock on `directory`, or 0 when no live process holds it."""
    try:
        fd = os.open(directory / "lock", os.O_RDONLY)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    finally:
        os.close(fd)
    return 0


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0
