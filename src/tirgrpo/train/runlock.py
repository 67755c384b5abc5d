"""One writer per run folder: an exclusive lock held for the life of a training run.

Two trainers in one folder (say a `--resume` while the first still runs) interleave their
metrics and race on `checkpoints/latest`. `RunLock` takes an exclusive `flock` on
`RUN_DIR/.lock` without waiting; the second trainer is refused with the holder's pid. The
kernel drops the lock when its file descriptor closes, so it is released on a normal exit,
on an exception and on a crash or `kill -9` alike: a stale lock file never blocks a resume.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from tirgrpo.errors import TirgrpoError

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(run_dir):` holds RUN_DIR/.lock exclusively (creating the folder if needed).

    If this lock created the folder and, on release, the folder holds nothing but the lock
    file (the run was refused before writing anything), the folder is removed again, so a
    refused run leaves nothing behind.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created_dir = False
        self.created: list[Path] = []

    def acquire(self) -> "RunLock":
        """Take the lock or raise TirgrpoError naming the pid that holds it."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise TirgrpoError(f"run folder {self.run_dir} exists and is not a folder")
        self.created_dir = not self.run_dir.exists()
        # The folders this lock makes (the run folder and missing parents), innermost first.
        self.created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TirgrpoError(f"cannot create the run folder's lock {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise TirgrpoError(
                    f"{self.run_dir} is in use by another tirgrpo process (pid {holder}); wait for it to "
                    f"end (or stop it) before resuming, or choose another run.out_dir") from None
            raise TirgrpoError(f"cannot lock {self.path}: {e.strerror or e}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock; remove the folder again if this lock made it and nothing else was written."""
        if self.fd is None:
            return
        try:
            if self.created_dir and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
                self.path.unlink()
                for folder in self.created:
                    folder.rmdir()  # fails (and stops) at a folder something else wrote into
        except OSError:
            pass  # a folder someone else wrote into in the meantime stays
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
