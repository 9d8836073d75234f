"""Lock files under state_dir: one per repo (a check), one per daemon (the whole state_dir).

flock locks belong to the open file, so the kernel drops them when a killed process dies: a
lock left by a crash never blocks the next run.
"""
from __future__ import annotations

import fcntl
import os
import time

from .errors import LockedError


class FileLock:
    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self.fd = None

    def acquire(self, wait: float = 0.0) -> "FileLock":
        """Take the lock, waiting up to `wait` seconds; raise LockedError if it stays taken."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read(fd)
                    os.close(fd)
                    raise LockedError(f"{self.what} is busy ({holder or 'held by another process'})") from None
                time.sleep(0.05)
        # Fixed width, written in place: truncating the file first costs a journal commit on ext4
        # (~0.2 ms, on every check).
        os.pwrite(fd, f"pid {os.getpid():<10}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing drops the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _read(fd) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def repo_lock(state_dir: str, name: str) -> FileLock:
    # name is validated at config load (no '/', no leading '.'), so this stays inside state_dir
    return FileLock(os.path.join(state_dir, "locks", f"{name}.lock"), f"repo {name}")


def agent_lock(state_dir: str) -> FileLock:
    return FileLock(os.path.join(state_dir, "agent.lock"), f"state_dir {state_dir}")
