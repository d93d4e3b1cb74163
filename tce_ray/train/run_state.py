"""A run's state files, kept where the run's storage lives (local folder or object store).

Ray Train writes a run's checkpoints to its storage: a local folder or a URI such as
``s3://bucket/prefix``, resolved by ``pyarrow.fs.FileSystem.from_uri`` (Ray's
``get_fs_and_path``). A few small files must survive a failure too, and be readable from
whichever node the restarted process lands on: the class-weight actor's snapshot, the
non-finite-loss marker, the worker pid files of the fault-injection tests, and the
class-index cache. :class:`RunState` reads, writes, deletes and lists them under one
location on that same storage, so nothing a run needs after a failure sits on one node's
local disk. No Ray here: plain pyarrow filesystems.

Writes replace a file atomically: on a local disk through a temporary file in the same
folder, ``fsync`` and ``os.replace``; on an object store (S3, GCS) with a single upload,
which becomes visible only when complete (a reader sees the old object or the new one,
never half of one); elsewhere through a temporary file and ``FileSystem.move``.

Locations are strings a process on another node can resolve again the same way: a local
path, or a URI; a URI may carry pyarrow's options as a query (``s3://b/p?endpoint_override=
host:port&scheme=http``), which :func:`storage_join` keeps at the end when it adds path
parts. An S3-compatible endpoint may also come from the environment (``AWS_ENDPOINT_URL``,
honoured by pyarrow's AWS SDK); then every node needs it in its environment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = ["RunState", "RunStateError", "storage_join", "is_uri", "resolve_storage", "cached_class_index"]

log = logging.getLogger(__name__)

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
_OBJECT_STORES = {"s3", "gcs"}  # one PUT replaces an object atomically
_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class RunStateError(OSError):
    """A run-state file could not be read, written, listed or deleted on the run's storage."""


def is_uri(location: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///...`` (not a local path)."""
    return bool(_URI.match(str(location)))


def storage_join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base/part/...`` for a local path or a URI; a URI's query (``?endpoint_override=...``)
    stays at the end: ``storage_join("s3://b/p?scheme=http", "run")`` is ``s3://b/p/run?scheme=http``."""
    base = os.fspath(base)
    clean = [p.strip("/") for p in parts if p.strip("/")]
    if not is_uri(base):
        return os.path.join(base, *clean) if clean else base
    head, sep, query = base.partition("?")
    head = head.rstrip("/") if not head.endswith("://") else head
    joined = "/".join([head, *clean]) if clean else head
    return joined + sep + query


def resolve_storage(location: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` of a location, as Ray Train resolves its ``storage_path``:
    ``filesystem`` as given (the path then must be a path on it), a URI through
    ``pyarrow.fs.FileSystem.from_uri``, a local path as an absolute path on the local disk."""
    location = os.fspath(location)
    if filesystem is not None:
        return filesystem, location
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise RunStateError(
                f"cannot open the storage {location!r}: {e}. Use a URI pyarrow understands "
                "(s3://bucket/prefix, gs://bucket/prefix, file:///abs/path); for an S3-compatible server "
                "add ?endpoint_override=HOST:PORT&scheme=http or set AWS_ENDPOINT_URL"
            ) from e
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key) or any(p in (".", "..") for p in key.split("/")):
        raise ValueError(
            f"run-state key {key!r} must be a relative path of letters, digits, '.', '_', '-' "
            "separated by '/', without '.' or '..' parts"
        )
    return key


class RunState:
    """The state files of one run under ``location`` (a local folder or a URI), on its storage.

    Args:
        location: where the files go, e.g. ``storage_join(storage_path, name, "tce_state")``.
        filesystem: a pyarrow filesystem to use instead of resolving ``location`` (then
            ``location`` is a path on it), like Ray's ``RunConfig(storage_filesystem=...)``.

    Keys are relative paths (``class_weights.json``, ``pids/rank0.pid``). A RunState pickles
    as its location (and its filesystem when one was given), so another process, on another
    node, resolves the same storage again.
    """

    def __init__(self, location: str | os.PathLike[str], *, filesystem: pafs.FileSystem | None = None) -> None:
        self.location = os.fspath(location)
        self._custom_fs = filesystem
        self._resolved: tuple[pafs.FileSystem, str] | None = None

    def _resolve(self) -> tuple[pafs.FileSystem, str]:
        if self._resolved is None:  # on first use: a URI may need the network (bucket region)
            fs, root = resolve_storage(self.location, self._custom_fs)
            self._resolved = (fs, root.rstrip("/") or "/")
        return self._resolved

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem (resolved on first use)."""
        return self._resolve()[0]

    @property
    def root(self) -> str:
        """The folder's path on :attr:`fs`."""
        return self._resolve()[1]

    @property
    def is_local(self) -> bool:
        """On this machine's disk (pyarrow's LocalFileSystem)."""
        if self._custom_fs is None and not is_uri(self.location):
            return True
        return self.fs.type_name == "local"

    def __reduce__(self):
        return (_rebuild, (self.location, self._custom_fs))

    def __repr__(self) -> str:
        return f"RunState({self.location!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunState) and other.location == self.location and other._custom_fs == self._custom_fs

    def __hash__(self) -> int:
        return hash(self.location)

    # -- addressing --------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The path of ``key`` on :attr:`fs`."""
        return f"{self.root}/{_check_key(key)}" if self.root != "/" else f"/{_check_key(key)}"

    def uri(self, key: str) -> str:
        """A location of ``key`` that another process resolves to the same file."""
        return storage_join(self.location, _check_key(key))

    def sub(self, key: str) -> RunState:
        """The state under the folder ``key`` (same storage)."""
        if self._custom_fs is not None:
            return RunState(self.path(key), filesystem=self._custom_fs)
        return RunState(self.uri(key))

    @classmethod
    def for_file(cls, location: str | os.PathLike[str], *, filesystem: pafs.FileSystem | None = None) -> tuple[RunState, str]:
        """``(RunState of the folder, key)`` of a single file's location (a path or a URI)."""
        location = os.fspath(location)
        head, sep, query = location.partition("?") if is_uri(location) else (location, "", "")
        folder, _, name = head.rstrip("/").rpartition("/")
        if not name or not folder or folder.endswith(":/"):
            raise ValueError(f"{location!r} does not name a file inside a folder")
        return cls(folder + sep + query, filesystem=filesystem), _check_key(name)

    # -- reading -----------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes | None:
        """The file's content, or None when there is no such file."""
        path = self.path(key)
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            if self._missing(path):
                return None
            raise self._error("read", key, e) from e

    def read_text(self, key: str) -> str | None:
        data = self.read_bytes(key)
        return None if data is None else data.decode()

    def read_json(self, key: str) -> Any:
        """The file's JSON content, or None when there is no such file (ValueError naming
        the file when it is not JSON)."""
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            return json.loads(data.decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{self.uri(key)} is not valid JSON ({e}); delete it if it is stale") from e

    def exists(self, key: str) -> bool:
        try:
            return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File
        except OSError as e:
            raise self._error("look up", key, e) from e

    def list(self, prefix: str = "") -> list[str]:
        """Keys of the files under the folder ``prefix`` ("" = all), recursively, sorted (names
        starting with "." - temporary files - left out)."""
        base = self.path(prefix) if prefix else self.root
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise self._error("list", prefix or ".", e) from e
        root = self.root.rstrip("/") + "/"
        keys = [i.path[len(root):] for i in infos if i.type == pafs.FileType.File and i.path.startswith(root)]
        return sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith("."))  # not our temporary files

    # -- writing -----------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> str:
        """Replace the file with ``data`` atomically (see the module docstring); returns its URI."""
        path = self.path(key)
        try:
            if self.is_local:
                _atomic_local_write(Path(path), bytes(data))
            elif self.fs.type_name in _OBJECT_STORES:
                payload = bytes(data)  # one write call: nothing half-written reaches close()
                with self.fs.open_output_stream(path) as f:
                    f.write(payload)
            else:
                parent = path.rpartition("/")[0]
                if parent:
                    self.fs.create_dir(parent, recursive=True)
                tmp = f"{parent}/.{key.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
                with self.fs.open_output_stream(tmp) as f:
                    f.write(bytes(data))
                self.fs.move(tmp, path)
        except OSError as e:
            raise self._error("write", key, e) from e
        return self.uri(key)

    def write_text(self, key: str, text: str) -> str:
        return self.write_bytes(key, text.encode())

    def write_json(self, key: str, obj: Any) -> str:
        return self.write_bytes(key, json.dumps(obj, allow_nan=True).encode())

    def delete(self, key: str) -> bool:
        """Delete the file; True if there was one."""
        path = self.path(key)
        try:
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                return False
            self.fs.delete_file(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._error("delete", key, e) from e

    def delete_all(self, prefix: str = "") -> int:
        """Delete every file under the folder ``prefix`` ("" = all); returns how many."""
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    # -- internals ---------------------------------------------------------------------
    def _missing(self, path: str) -> bool:
        try:
            return self.fs.get_file_info(path).type == pafs.FileType.NotFound
        except OSError:
            return False

    def _error(self, what: str, key: str, err: BaseException) -> RunStateError:
        hint = ""
        if not self.is_local:
            hint = (
                " The run's storage must be reachable from every node with the same settings: for an "
                "S3-compatible server give the endpoint (AWS_ENDPOINT_URL, or ?endpoint_override=HOST:PORT"
                "&scheme=http in the URI) and credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) on every node."
            )
        return RunStateError(f"could not {what} run state {self.uri(key)}: {err}.{hint}")


def _rebuild(location: str, filesystem: pafs.FileSystem | None) -> RunState:
    return RunState(location, filesystem=filesystem)


def _atomic_local_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- class index


def cached_class_index(dataset: Any, cache: str | os.PathLike[str] | RunState, *, num_threads: int = 1):
    """``ClassIndex.build(dataset, cache_dir=...)`` with the cache on the run's storage.

    A local ``cache`` is passed to ``ClassIndex.build`` as it is. For a remote one the
    cached Parquet file (``class_index-<fingerprint>.parquet``) is fetched into a scratch
    folder that is deleted on return, ``ClassIndex.build`` checks it (fingerprint, classes,
    image count) or rebuilds it, and a rebuilt index is uploaded (one atomic PUT), so every
    node reuses the one cached file and nothing stays on a node's disk.
    """
    from tce_ray.data.sampling import ClassIndex  # numpy + pyarrow (+ torch's Sampler): only here

    state = cache if isinstance(cache, RunState) else RunState(cache)
    if state.is_local:
        return ClassIndex.build(dataset, cache_dir=state.root, num_threads=num_threads)
    key = ClassIndex.cache_path(".", str(dataset.fingerprint())).name
    cached = state.read_bytes(key)
    with tempfile.TemporaryDirectory(prefix="tce-class-index-") as scratch:
        local = Path(scratch) / key
        if cached is not None:
            local.write_bytes(cached)
        index = ClassIndex.build(dataset, cache_dir=scratch, num_threads=num_threads)
        fresh = local.read_bytes() if local.exists() else None
    if fresh is not None and fresh != cached:
        state.write_bytes(key, fresh)
        log.info("class index %s %s", "rebuilt and cached at" if cached is None else "rebuilt (stale cache) at", state.uri(key))
    return index
