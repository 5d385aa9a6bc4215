"""The run folder (``output_dir``): its lock, leftovers of killed runs, atomic text files.

* :class:`RunLock`: one run per folder. The main process holds an exclusive ``flock`` on
  ``output_dir/.seg-train.lock`` for the whole run; the file names the holder (pid, host,
  start time) so a second run is refused with who holds it. The kernel releases the lock
  when its process dies (even SIGKILL), so a lock file left by a dead process is detected
  as stale and taken over; where ``flock`` is unavailable the pid alone decides.
* :func:`remove_leftovers`: temporary files of saves that were killed half-way
  (``.<name>.tmp-<pid>``, see :func:`seg_trainer.checkpoint.save_checkpoint`).
* :func:`atomic_write_text`: ``config.yaml``, ``metrics.json`` are written to a temporary
  file, fsynced and renamed, never left half-written.
* :func:`check_writable` and :func:`check_free_space`: fail before the first iteration.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from .errors import OutputDirBusy, StorageError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "RunLock",
    "atomic_write_text",
    "check_free_space",
    "check_writable",
    "human_bytes",
    "is_temp_file",
    "remove_leftovers",
    "temp_path",
]

LOCK_NAME = ".seg-train.lock"
_TMP_MARK = ".tmp-"


def human_bytes(n: float) -> str:
    """``1536000`` -> ``'1.5 MB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def temp_path(path: Path) -> Path:
    """The temporary name a save of ``path`` writes first: ``.<name>.tmp-<pid>`` beside it."""
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")


def is_temp_file(path: Path) -> bool:
    """True for a temporary file written by :func:`temp_path` (of any process)."""
    return path.name.startswith(".") and _TMP_MARK in path.name


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a fsynced temporary file and ``os.replace``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def remove_leftovers(output_dir: str | Path) -> list[tuple[Path, int]]:
    """Delete temporary files of killed saves in ``output_dir`` and its ``checkpoints/``.

    Call it while holding the :class:`RunLock` (no live save can own them then).
    Returns ``(path, size in bytes)`` of each file removed.
    """
    removed = []
    out = Path(output_dir)
    for folder in (out, out / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_file() and is_temp_file(p):
                size = p.stat().st_size
                p.unlink(missing_ok=True)
                removed.append((p, size))
    return removed


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "write-probe")
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StorageError(
            f"cannot write into {folder}: {exc.strerror or exc}. Fix its permissions or choose "
            "another output_dir (--set output_dir=...)"
        ) from None


def check_free_space(folder: str | Path, need: int, what: str) -> None:
    """Raise :class:`StorageError` when the disk of ``folder`` has less than ``need`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise StorageError(
            f"not enough free space in {folder}: {human_bytes(free)} free, {what} need about "
            f"{human_bytes(need)}. Free some space, lower checkpoint.keep_last, or choose "
            "another output_dir (--set output_dir=...)"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"


class RunLock:
    """Exclusive lock on a run folder for the lifetime of one run (use as a context manager).

    Raises:
        OutputDirBusy: a live process holds it (the message names the pid and host).
        StorageError: the folder cannot be created or written.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.folder = Path(output_dir)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.stale: dict[str, Any] | None = None  # the dead holder whose lock was taken over

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict[str, Any]) -> OutputDirBusy:
        return OutputDirBusy(
            f"{self.folder} is in use by another seg-train run ({_describe(holder)}; lock file "
            f"{self.path}). Two runs in one output_dir would overwrite each other's "
            "checkpoints: wait for it to finish, or choose another output_dir "
            "(--set output_dir=...)"
        )

    def acquire(self) -> RunLock:
        check_writable(self.folder)
        for _ in range(5):  # retry when the file was replaced between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = self._flock(fd)
            if locked is False:
                os.close(fd)
                raise self._busy(self._read())
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - pathological churn
            raise self._busy(self._read())
        previous = self._read()
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            by_pid = locked is None and previous.get("host") == socket.gethostname()
            if by_pid and _pid_alive(pid):
                os.close(fd)
                raise self._busy(previous)
            self.stale = previous
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """Try the exclusive lock: True (held), False (another process holds it), None
        (no flock here: the pid written in the file decides)."""
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no flock on this file system
            return None
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: no one else has it
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()
