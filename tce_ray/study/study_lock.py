"""One writer per study folder: a lock on ``<storage>/<name>/`` held while a study runs.

Two studies started with the same name and storage would otherwise both write one Tune
experiment (the second restores the first's state while it runs). :func:`acquire_study_lock`
takes the folder's lock or raises :class:`StudyLockedError`, one line naming the lock,
its owner (pid, host, start time, command line) and what to do.

**Local folder** (a path, or a ``file://`` URI): an OS lock, ``fcntl.flock`` on
``<folder>/.study.lock``, whose content records the owner. The kernel drops the lock when
the process ends in any way, SIGKILL and OOM kills included, so a killed study never
leaves a lock that blocks ``--resume``; nothing needs removing. The file itself stays
(deleting a flock file while others may open it would let two holders in). Caveats: the
open descriptor is close-on-exec, but a child *forked* without exec (``multiprocessing``
with the fork start method) shares it and keeps the lock until it exits too; on a network
file system without lock support the lock falls back to the lock-object scheme below.

**Remote storage** (``s3://``, ``gs://``, any ``pyarrow.fs`` file system): no OS locks,
so a lock object ``<folder>/.study.lock`` holding the owner (JSON) is written, read back
after ``settle_s`` seconds to detect a concurrent writer (the one whose token is there
wins), and deleted on release. Object stores have no atomic create-if-absent through
pyarrow, so two studies starting within the settle time of each other's existence check
could both proceed: a narrow window, documented. A killed study leaves its lock object
behind: on the SAME host (same hostname and boot) a lock whose process is gone (or whose
pid now belongs to a younger process) is taken over automatically; from another host it
cannot be told from a running one, so the second study is refused with how to remove it:
``--force-unlock`` (``force=True``) or deleting the object.

This module imports neither Ray nor torch; pyarrow only for remote storage.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import shlex
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "LockOwner", "StudyLock", "StudyLockError", "StudyLockedError", "acquire_study_lock"]

log = logging.getLogger(__name__)

LOCK_NAME = ".study.lock"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _boot_id() -> str:
    return (_read_text("/proc/sys/kernel/random/boot_id") or "").strip()


def _pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when unknown): with the pid
    it names one process even after the pid is reused."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def _command_line() -> str:
    raw = _read_text("/proc/self/cmdline")
    args = [a for a in raw.split("\0") if a] if raw else [sys.executable, *sys.argv]
    if args:
        args[0] = os.path.basename(args[0])
    return _one_line(shlex.join(args))


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class LockOwner:
    """Who holds a study lock."""

    pid: int
    host: str
    started: str
    """UTC, ISO 8601."""
    command: str
    token: str
    boot_id: str = ""
    pid_start: str = ""

    @classmethod
    def current(cls) -> LockOwner:
        pid = os.getpid()
        return cls(
            pid=pid, host=socket.gethostname(),
            started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            command=_command_line(), token=uuid.uuid4().hex, boot_id=_boot_id(), pid_start=_pid_start(pid),
        )

    @classmethod
    def parse(cls, text: str | bytes | None) -> LockOwner | None:
        """The owner recorded in a lock file, or None when it is empty or unreadable."""
        try:
            d = json.loads(text) if text else None
            if not isinstance(d, dict):
                return None
            return cls(int(d["pid"]), str(d["host"]), str(d["started"]), str(d.get("command", "")),
                       str(d.get("token", "")), str(d.get("boot_id", "")), str(d.get("pid_start", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1) + "\n").encode()

    def describe(self) -> str:
        return _one_line(f"pid {self.pid} on {self.host}, started {self.started}: {self.command or '(command unknown)'}", 400)

    def gone(self) -> str | None:
        """Why this owner is certainly not running any more (same host and boot only), or None."""
        if not self.boot_id or self.host != socket.gethostname() or self.boot_id != _boot_id():
            return None  # another machine (or cannot tell): it may be running
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return f"its process {self.pid} is gone"
        except PermissionError:
            pass  # exists, another user's
        if self.pid_start and _pid_start(self.pid) not in ("", self.pid_start):
            return f"pid {self.pid} now belongs to another process"
        return None


class StudyLockError(RuntimeError):
    """The study folder cannot be locked (not a folder, no permission, ...)."""


class StudyLockedError(StudyLockError):
    """Another study holds the folder. ``lock_path`` is the lock, ``owner`` its recorded
    owner (None when unreadable); ``str(err)`` is one line saying what to do."""

    def __init__(self, message: str, lock_path: str, owner: LockOwner | None):
        self.lock_path = lock_path
        self.owner = owner
        super().__init__(message)


def _who(owner: LockOwner | None) -> str:
    return owner.describe() if owner else "owner not recorded"


class StudyLock:
    """A held study lock; :meth:`release` (or leaving the ``with`` block, or the process
    ending for a local lock) frees it. ``kind`` is ``"flock"`` or ``"object"``."""

    def __init__(self, folder: str, lock_path: str, owner: LockOwner, kind: str, *,
                 fd: int | None = None, fs: Any = None, fs_path: str | None = None):
        self.folder = folder
        self.lock_path = lock_path
        self.owner = owner
        self.kind = kind
        self._fd = fd
        self._fs = fs
        self._fs_path = fs_path
        self.released = False

    def release(self) -> None:
        """Free the lock (idempotent). A lock object is deleted only while it is still ours."""
        if self.released:
            return
        self.released = True
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file stays (see the module doc)
            self._fd = None
            return
        current = LockOwner.parse(_fs_read(self._fs, self._fs_path))
        if current is not None and current.token == self.owner.token:
            self._fs.delete_file(self._fs_path)
        else:
            log.warning("not deleting %s: it no longer holds this study's lock (%s)", self.lock_path, _who(current))

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"StudyLock({self.lock_path!r}, kind={self.kind!r}, released={self.released})"


def acquire_study_lock(
    experiment_path: str | os.PathLike[str],
    *,
    force: bool = False,
    filesystem: Any = None,
    settle_s: float = 1.0,
) -> StudyLock:
    """Lock the study folder ``experiment_path`` (``<storage>/<name>``; created if needed).

    A local path or ``file://`` URI gets an OS lock; any other URI (or an explicit
    ``filesystem``, a ``pyarrow.fs.FileSystem`` with ``experiment_path`` a path in it)
    gets a lock object. ``force`` replaces a remote lock object that another study left
    (it cannot break an OS lock held by a running process). Raises
    :class:`StudyLockedError` when another study holds it, :class:`StudyLockError` when
    the folder cannot be used.
    """
    path = os.fspath(experiment_path)
    if filesystem is None and _URI.match(path):
        import pyarrow.fs as pafs

        try:
            filesystem, fs_path = pafs.FileSystem.from_uri(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for bad or unreachable URIs
            raise StudyLockError(f"cannot open the study folder {path}: {exc}") from None
        if isinstance(filesystem, pafs.LocalFileSystem):
            return _flock(fs_path, force)
        return _object_lock(filesystem, fs_path, path.rstrip("/") + "/" + LOCK_NAME, force, settle_s)
    if filesystem is not None:
        return _object_lock(filesystem, path, path.rstrip("/") + "/" + LOCK_NAME, force, settle_s)
    return _flock(path, force)


def _flock(folder: str, force: bool) -> StudyLock:
    import fcntl

    lock_path = os.path.join(folder, LOCK_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (FileExistsError, NotADirectoryError):
        raise StudyLockError(f"the study folder {folder} cannot be created: a file is in the way "
                             "(storage must name a folder)") from None
    except OSError as exc:
        raise StudyLockError(f"cannot lock the study folder {folder}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = LockOwner.parse(os.pread(fd, 65536, 0))
        os.close(fd)
        hint = (" --force-unlock cannot break the lock of a running process;" if force else "")
        raise StudyLockedError(
            f"the study folder {folder} is in use by another study ({_who(owner)}); lock: {lock_path}.{hint} "
            "Wait for that study to finish or stop it, then run again (the lock ends with its process, "
            "so a killed study leaves nothing to remove)",
            lock_path, owner,
        ) from None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in _NO_LOCKS:
            raise StudyLockError(f"cannot lock the study folder {folder}: {exc.strerror or exc}") from None
        import pyarrow.fs as pafs  # e.g. NFS without a lock service: a lock object instead

        log.warning("%s does not support file locks (%s); using a lock object", folder, exc.strerror)
        return _object_lock(pafs.LocalFileSystem(), folder, lock_path, force, settle_s=1.0)
    me = LockOwner.current()
    data = me.to_json()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    return StudyLock(folder, lock_path, me, "flock", fd=fd)


def _fs_read(fs: Any, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, FileNotFoundError):
        return None
    except Exception:  # pyarrow's own errors for a vanished object
        return None


def _fs_write(fs: Any, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _object_lock(fs: Any, fs_folder: str, lock_uri: str, force: bool, settle_s: float) -> StudyLock:
    import pyarrow.fs as pafs

    fs_path = fs_folder.rstrip("/") + "/" + LOCK_NAME
    folder_uri = lock_uri[: -len(LOCK_NAME) - 1]
    try:
        info = fs.get_file_info(fs_folder)
        if info.type == pafs.FileType.File:
            raise StudyLockError(f"the study folder {folder_uri} is a file (storage must name a folder)")
        fs.create_dir(fs_folder, recursive=True)
        existing = fs.get_file_info(fs_path)
    except StudyLockError:
        raise
    except Exception as exc:
        raise StudyLockError(f"cannot use the study folder {folder_uri}: {exc}") from None
    if existing.type == pafs.FileType.File:
        owner = LockOwner.parse(_fs_read(fs, fs_path))
        gone = owner.gone() if owner is not None else None
        if force:
            log.warning("--force-unlock: replacing the lock %s (%s)", lock_uri, _who(owner))
        elif gone:
            log.warning("taking over the lock %s left by a study that ended (%s)", lock_uri, gone)
        else:
            raise StudyLockedError(
                f"the study folder {folder_uri} is in use by another study ({_who(owner)}); lock: {lock_uri}. "
                "If that study is no longer running (killed, or its machine lost), run again with "
                f"--force-unlock or delete {lock_uri}",
                lock_uri, owner,
            )
    me = LockOwner.current()
    try:
        _fs_write(fs, fs_path, me.to_json())
    except Exception as exc:
        raise StudyLockError(f"cannot write the lock {lock_uri}: {exc}") from None
    if settle_s > 0:
        time.sleep(settle_s)
    back = LockOwner.parse(_fs_read(fs, fs_path))
    if back is None or back.token != me.token:
        raise StudyLockedError(
            f"the study folder {folder_uri} was locked by another study starting at the same moment "
            f"({_who(back)}); lock: {lock_uri}. Wait for it to finish",
            lock_uri, back,
        )
    return StudyLock(folder_uri, lock_uri, me, "object", fs=fs, fs_path=fs_path)
