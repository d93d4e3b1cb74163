"""RunState: a run's state files on its storage (local disk, a loopback S3 server, any pyarrow
filesystem), atomic replacement, errors that name the file; the class-index cache on S3.

"Another node" is another process with its own, empty TMPDIR: it finds what the first one
wrote through the storage alone.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from tce_ray.train.run_state import RunState, RunStateError, cached_class_index, storage_join

ROOT = Path(__file__).resolve().parents[1]


def test_storage_join_local_uri_and_query():
    assert storage_join("/a/b", "run", "tce_state") == "/a/b/run/tce_state"
    assert storage_join("s3://bkt/pre/", "run", "/x/") == "s3://bkt/pre/run/x"
    assert storage_join("s3://bkt", "run") == "s3://bkt/run"
    assert storage_join("s3://bkt/p?endpoint_override=127.0.0.1:9&scheme=http", "run", "s") == (
        "s3://bkt/p/run/s?endpoint_override=127.0.0.1:9&scheme=http"
    )
    assert storage_join("s3://bkt/p") == "s3://bkt/p"


def _exercise(state: RunState) -> None:
    """The same contract on every filesystem."""
    assert state.read_bytes("nothing.json") is None and state.read_json("nothing.json") is None
    assert not state.exists("nothing.json") and state.delete("nothing.json") is False
    assert state.list() == []
    state.write_json("class_weights.json", {"format": 1, "x": [1.5, float("inf")]})
    state.write_text("pids/rank0.pid", "123")
    state.write_text("pids/rank1.pid", "456")
    assert state.read_json("class_weights.json") == {"format": 1, "x": [1.5, float("inf")]}
    assert state.read_text("pids/rank1.pid") == "456" and state.exists("pids/rank0.pid")
    assert state.list() == ["class_weights.json", "pids/rank0.pid", "pids/rank1.pid"]
    assert state.list("pids") == ["pids/rank0.pid", "pids/rank1.pid"]
    state.write_text("pids/rank0.pid", "789")  # replaced, not appended
    assert state.read_text("pids/rank0.pid") == "789"
    state.write_bytes("broken.json", b"{not json")
    with pytest.raises(ValueError, match=r"broken\.json(\?\S*)? is not valid JSON"):
        state.read_json("broken.json")
    assert state.delete("broken.json") is True and not state.exists("broken.json")
    assert state.delete_all("pids") == 2 and state.list() == ["class_weights.json"]
    # a pickled RunState (what a Ray worker receives) reaches the same files
    again = pickle.loads(pickle.dumps(state))
    assert again == state and again.read_json("class_weights.json")["format"] == 1
    for bad in ("", "/abs", "../up", "a/../b", "a b", "a//b"):
        with pytest.raises(ValueError, match="run-state key"):
            state.read_bytes(bad)


def test_local_state_is_atomic_and_leaves_no_temporary_file(tmp_path):
    state = RunState(tmp_path / "run" / "tce_state")
    _exercise(state)
    folder = tmp_path / "run" / "tce_state"
    assert sorted(p.name for p in folder.iterdir()) == ["class_weights.json", "pids"]
    assert state.uri("class_weights.json") == str(folder / "class_weights.json")


def test_local_replacement_is_atomic_under_concurrent_reads(tmp_path):
    """A reader never sees a partial file while a writer replaces it (os.replace)."""
    state = RunState(tmp_path)
    big = {"v": list(range(20000))}
    state.write_json("s.json", {"v": []})
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(len(state.read_json("s.json")["v"]))  # raises on a torn file

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        state.write_json("s.json", big if i % 2 else {"v": []})
    stop.set()
    t.join()
    assert set(seen) <= {0, 20000} and len(seen) > 0


def test_other_filesystems_go_through_a_temporary_file_and_move(tmp_path):
    sub = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())  # not "local": the generic path
    state = RunState("state", filesystem=sub)
    assert not state.is_local
    _exercise(state)
    assert [p.name for p in (tmp_path / "state").rglob("*") if p.is_file()] == ["class_weights.json"]  # no .tmp left
    assert RunState.for_file("s3://b/x/tce_state/w.json?scheme=http")[0].location == "s3://b/x/tce_state?scheme=http"
    folder, key = RunState.for_file(tmp_path / "state" / "class_weights.json")
    assert key == "class_weights.json" and folder.read_json(key)["format"] == 1
    with pytest.raises(ValueError, match="does not name a file"):
        RunState.for_file("s3://bucket")


def test_s3_state_with_the_endpoint_from_the_environment(s3_env):
    uri = storage_join(s3_env.uri(), "run", "tce_state")
    state = RunState(uri)
    assert state.fs.type_name == "s3" and not state.is_local
    _exercise(state)
    prefix = uri[len(f"s3://{s3_env.bucket}/"):]
    assert s3_env.keys(prefix) == [f"{prefix}/class_weights.json"]
    assert state.uri("class_weights.json") == uri + "/class_weights.json"


def test_s3_state_with_the_endpoint_in_the_uri(s3_server):
    """No AWS_ENDPOINT_URL in this process: the endpoint travels in the location itself."""
    assert "AWS_ENDPOINT_URL" not in os.environ
    state = RunState(storage_join(s3_server.query_uri(), "run", "tce_state"))
    os.environ.update({k: v for k, v in s3_server.env.items() if k != "AWS_ENDPOINT_URL"})
    try:
        _exercise(state)
        assert state.uri("a.json").endswith("/run/tce_state/a.json?endpoint_override=127.0.0.1:%d&scheme=http" % s3_server.port)
    finally:
        for k in s3_server.env:
            if k != "AWS_ENDPOINT_URL":
                os.environ.pop(k, None)


def test_unreachable_storage_raises_an_error_naming_the_file_and_the_fix(s3_env, monkeypatch):
    from s3_server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    state = RunState("s3://nobucket/run/tce_state")
    t0 = time.monotonic()
    with pytest.raises(RunStateError, match=r"could not write run state s3://nobucket/run/tce_state/w\.json.*AWS_ENDPOINT_URL"):
        state.write_json("w.json", {})
    assert time.monotonic() - t0 < 60


_OTHER_NODE = """
import json, os, sys, tempfile
from tce_ray.train.run_state import RunState
state = RunState(sys.argv[1])
print(json.dumps({"tmp": tempfile.gettempdir(), "snap": state.read_json("class_weights.json"), "keys": state.list()}))
state.write_text("pids/rank0.pid", str(os.getpid()))
"""


def test_another_process_with_its_own_tmpdir_sees_the_s3_state(s3_server, tmp_path):
    state_uri = storage_join(s3_server.uri(), "run", "tce_state")
    env = {**os.environ, **s3_server.env, "PYTHONPATH": str(ROOT)}
    os.environ.update(s3_server.env)
    try:
        RunState(state_uri).write_json("class_weights.json", {"format": 1, "num_updates": 7})
        node_tmp = tmp_path / "node2-tmp"
        node_tmp.mkdir()
        out = subprocess.run([sys.executable, "-c", _OTHER_NODE, state_uri], env={**env, "TMPDIR": str(node_tmp)},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout)
        assert seen["tmp"] == str(node_tmp) and seen["snap"]["num_updates"] == 7
        assert seen["keys"] == ["class_weights.json"]
        assert list(node_tmp.iterdir()) == []  # the other process wrote nothing locally
        assert int(RunState(state_uri).read_text("pids/rank0.pid")) > 0  # its write reached the storage
    finally:
        for k in s3_server.env:
            os.environ.pop(k, None)


class Masks:
    def __init__(self, masks, num_classes=3, fp="masks-v1"):
        self.masks, self.num_classes, self.fp = masks, num_classes, fp
        self.class_names = tuple(f"c{c}" for c in range(num_classes))
        self.ignore_index = 255
        self.calls = 0

    def __len__(self):
        return len(self.masks)

    def load_mask(self, i):
        self.calls += 1
        return self.masks[i]

    def fingerprint(self):
        return self.fp


def test_class_index_cache_on_s3_is_shared_and_leaves_the_local_disk_empty(s3_env, tmp_path, monkeypatch):
    local_tmp = tmp_path / "tmp"
    local_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(local_tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    masks = [np.array([[0, 1], [1, 255]]), np.array([[2, 2], [0, 0]]), np.array([[0, 0], [0, 0]])]
    cache = storage_join(s3_env.uri(), ".class_index_cache")
    first = Masks(masks)
    index = cached_class_index(first, cache)
    assert first.calls == 3
    np.testing.assert_array_equal(index.counts, [[1, 2, 0], [2, 0, 2], [4, 0, 0]])
    keys = RunState(cache).list()
    assert keys == ["class_index-masks-v1.parquet"]
    # another worker (another node) reads the cached file instead of counting
    second = Masks(masks)
    again = cached_class_index(second, cache)
    assert second.calls == 0
    np.testing.assert_array_equal(again.counts, index.counts)
    # a data set that no longer matches the cache (one more image) is counted and re-cached
    grown = Masks([*masks, np.array([[1, 1], [1, 1]])])
    before = RunState(cache).read_bytes(keys[0])
    assert cached_class_index(grown, cache).num_images == 4 and grown.calls == 4
    assert RunState(cache).read_bytes(keys[0]) != before
    assert cached_class_index(Masks([*masks, np.array([[1, 1], [1, 1]])]), cache).num_images == 4
    assert list(local_tmp.iterdir()) == []  # the scratch folder is gone
    # a local cache is ClassIndex.build's own folder
    local = cached_class_index(Masks(masks), tmp_path / "cache")
    assert (tmp_path / "cache" / "class_index-masks-v1.parquet").is_file() and local.num_images == 3


# --------------------------------------------------------------------------- WeightStore snapshots

_RESTARTED_ACTOR = """
import json, sys
from tce_ray.train.weights_actor import WeightStore
store = WeightStore(4, 1.0, 0.3, [0, 1, 2, 3], snapshot_path=sys.argv[1])
print(json.dumps({"restored": store.restored_updates, "state": store.state_dict(), "stats": store.stats()}))
"""


def test_weight_snapshot_on_s3_is_read_by_a_restarted_actor_in_another_process(s3_server, tmp_path, monkeypatch):
    """The actor's __init__ on "another node" (a process with an empty TMPDIR of its own)
    restores the state from the S3 snapshot; nothing is written to a local disk."""
    from tce_ray.train.weights_actor import WeightStore, read_snapshot, state_hash

    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    snap_uri = storage_join(s3_server.uri(), "run", "tce_state", "class_weights.json")
    store = WeightStore(4, 1.0, 0.3, [0, 1, 2, 3], snapshot_path=snap_uri, snapshot_every=2, snapshot_interval_s=3600)
    assert store.restored_updates is None
    store.report_many([0, 1], [0.5, 2.0])
    assert read_snapshot(snap_uri) is None  # 1 call < snapshot_every
    store.report_many([2, 3, 1], [1.0, 0.1, 3.0])
    snap = read_snapshot(snap_uri)
    assert snap["num_updates"] == 5 and snap["state"] == store.state_dict() and snap["pid"] == os.getpid()

    node_tmp = tmp_path / "node2-tmp"
    node_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(node_tmp)}
    out = subprocess.run([sys.executable, "-c", _RESTARTED_ACTOR, snap_uri], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["restored"] == 5 and state_hash(seen["state"]) == state_hash(store.state_dict())
    assert seen["stats"]["restored_from"]["pid"] == os.getpid()
    assert list(node_tmp.iterdir()) == []


def test_a_failed_snapshot_keeps_the_reports_and_is_retried(tmp_path, monkeypatch):
    from tce_ray.train.weights_actor import WeightStore, read_snapshot

    path = tmp_path / "state" / "w.json"
    store = WeightStore(4, 1.0, 0.3, [0, 1, 2, 3], snapshot_path=path, snapshot_every=1, snapshot_interval_s=3600)
    real = RunState.write_bytes

    def broken(self, key, data):
        raise RunStateError(f"could not write run state {self.uri(key)}: injected")

    monkeypatch.setattr(RunState, "write_bytes", broken)
    assert store.report_many([0], [1.0]) == 1  # the report stands
    assert store.stats()["snapshot_errors"] == 1 and read_snapshot(path) is None
    with pytest.raises(RunStateError, match="injected"):
        store.load_state_dict(store.state_dict())  # a restore that cannot be persisted is an error
    monkeypatch.setattr(RunState, "write_bytes", real)
    store.report_many([1], [2.0])
    assert read_snapshot(path)["num_updates"] == 2
