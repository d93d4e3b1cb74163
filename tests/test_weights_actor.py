"""WeightStore / ClassWeightActor (TiltState in an actor, snapshots) and WeightClient (non-blocking)."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from tce_ray.core.tilt import TiltState
from tce_ray.train.weights_actor import (
    WeightClient,
    WeightStore,
    actor_name,
    call_with_retry,
    create_weight_actor,
    read_snapshot,
    state_hash,
)

K = 5
DRAWABLE = [0, 1, 2, 4]  # class 3 has no image


def reference_state(pairs, t=1.0, gamma=0.3, floor=0.0) -> TiltState:
    """The state from plain sequential TiltState.update calls (the independent reference)."""
    ref = TiltState(K, t, gamma, DRAWABLE, weight_floor=floor)
    for c, loss in pairs:
        ref.update(c, loss)
    return ref


def assert_same_state(got: dict, want: dict) -> None:
    """Equal states: every entry identical, log_r up to float rounding (update_many is vectorised)."""
    assert {k: v for k, v in got.items() if k != "log_r"} == {k: v for k, v in want.items() if k != "log_r"}
    np.testing.assert_allclose(got["log_r"], want["log_r"], rtol=1e-12, atol=0)


def random_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(int(c), float(x)) for c, x in zip(rng.choice(DRAWABLE, n), rng.uniform(0.1, 3.0, n))]


# ----------------------------------------------------------------------------- plain Python
def test_actor_name_and_validation():
    assert actor_name("trial_7") == "tce-class-weights-trial_7"
    assert actor_name("a") != actor_name("b")
    for bad in ("", "  ", None, 3):
        with pytest.raises(ValueError, match="run_name"):
            actor_name(bad)


def test_report_many_matches_sequential_updates():
    pairs = random_pairs(60)
    store = WeightStore(K, 1.0, 0.3, DRAWABLE)
    # three calls of different sizes, in order
    for lo, hi in ((0, 7), (7, 8), (8, 60)):
        chunk = pairs[lo:hi]
        n = store.report_many([c for c, _ in chunk], [x for _, x in chunk])
        assert n == hi
    ref = reference_state(pairs)
    np.testing.assert_allclose(store.get_weights(), ref.weights, rtol=1e-12, atol=0)
    np.testing.assert_allclose(store.state_dict()["log_r"], ref.log_r, rtol=1e-12, atol=0)
    w, v = store.get_weights_versioned()
    assert v == 60 and w.sum() == pytest.approx(1.0) and w[3] == 0.0
    # the client's one-call sync: report, then the weights (a list) and the version
    more = random_pairs(5, seed=9)
    w2, v2 = store.report_and_get([c for c, _ in more], [x for _, x in more])
    assert v2 == 65 and isinstance(w2, list)
    np.testing.assert_allclose(w2, reference_state(pairs + more).weights, rtol=1e-12, atol=0)
    assert store.report_and_get([], []) == (w2, 65)  # nothing to report: just the weights


def test_bad_reports_are_rejected_and_change_nothing():
    store = WeightStore(K, 1.0, 0.3, DRAWABLE)
    before = store.state_dict()
    with pytest.raises(ValueError):
        store.report_many([0, 9], [1.0, 1.0])  # class 9 out of range
    with pytest.raises(ValueError):
        store.report_many([0], [float("nan")])
    assert store.state_dict() == before


def test_snapshot_roundtrip_and_cadence(tmp_path):
    path = tmp_path / "w.json"
    store = WeightStore(K, 1.0, 0.3, DRAWABLE, snapshot_path=path, snapshot_every=3, snapshot_interval_s=3600)
    pairs = random_pairs(5, seed=1)
    store.report_many([pairs[0][0]], [pairs[0][1]])
    store.report_many([pairs[1][0]], [pairs[1][1]])
    assert not path.exists()  # 2 calls < snapshot_every
    store.report_many([pairs[2][0]], [pairs[2][1]])
    assert read_snapshot(path)["num_updates"] == 3
    store.report_many([c for c, _ in pairs[3:]], [x for _, x in pairs[3:]])
    assert read_snapshot(path)["num_updates"] == 3  # not yet
    store.snapshot()  # on demand
    snap = read_snapshot(path)
    assert snap["num_updates"] == 5 and snap["state"] == store.state_dict()
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away
    # a new store (what a restarted actor runs) starts from the snapshot
    again = WeightStore(K, 1.0, 0.3, DRAWABLE, snapshot_path=path)
    assert again.restored_updates == 5
    assert_same_state(again.state_dict(), reference_state(pairs).state_dict())


def test_snapshot_by_time(tmp_path):
    path = tmp_path / "w.json"
    store = WeightStore(K, 1.0, 0.3, DRAWABLE, snapshot_path=path, snapshot_every=10**6, snapshot_interval_s=0.05)
    store.report_many([0], [1.0])
    time.sleep(0.06)
    store.report_many([1], [1.0])
    assert read_snapshot(path)["num_updates"] == 2


def test_load_state_dict_snapshots_and_validates(tmp_path):
    path = tmp_path / "w.json"
    store = WeightStore(K, 1.0, 0.3, DRAWABLE, snapshot_path=path)
    ref = reference_state(random_pairs(9, seed=2))
    assert store.load_state_dict(ref.state_dict()) == 9
    assert read_snapshot(path)["state"] == ref.state_dict()
    other = TiltState(K, 2.0, 0.3, DRAWABLE)  # another t: r means something else
    with pytest.raises(ValueError, match="t="):
        store.load_state_dict(other.state_dict())
    assert store.state_dict() == ref.state_dict()


def test_foreign_or_mismatched_snapshot_is_refused(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a class-weight snapshot"):
        WeightStore(K, 1.0, 0.3, DRAWABLE, snapshot_path=path)
    WeightStore(K + 1, 1.0, 0.3, snapshot_path=tmp_path / "k6.json").snapshot()
    with pytest.raises(ValueError, match="num_classes"):
        WeightStore(K, 1.0, 0.3, DRAWABLE, snapshot_path=tmp_path / "k6.json")


def test_state_hash_is_stable_through_json_and_torch_save(tmp_path):
    state = reference_state(random_pairs(20, seed=3)).state_dict()
    h = state_hash(state)
    assert state_hash(json.loads(json.dumps(state))) == h
    torch.save({"w": state}, tmp_path / "s.pt")
    assert state_hash(torch.load(tmp_path / "s.pt", weights_only=True)["w"]) == h
    changed = dict(state, log_r=[x + 1e-12 for x in state["log_r"]])
    assert state_hash(changed) != h


def test_client_argument_validation():
    for kw in ({"sync_every": 0}, {"max_inflight": 0}, {"max_buffer": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            WeightClient("x", actor=object(), **kw)


# ----------------------------------------------------------------------------- with Ray
def _slow_actor_class(delay_s: float):
    """A ClassWeightActor whose report_many takes ``delay_s`` (defined locally: pickled by value)."""
    import ray

    class SlowStore(WeightStore):
        def report_many(self, classes, losses):
            time.sleep(delay_s)
            return super().report_many(classes, losses)

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(SlowStore)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_client_never_blocks_and_delivers_every_report_in_order(ray_session):
    ray = ray_session
    delay = 0.8
    actor = _slow_actor_class(delay).remote(K, 1.0, 0.3, DRAWABLE)
    ray.get(actor.get_weights.remote())
    client = WeightClient("slow", actor=actor, sync_every=1, max_inflight=2)
    first = client.weights.copy()
    np.testing.assert_allclose(first, reference_state([]).weights)
    pairs = random_pairs(40, seed=4)
    worst = 0.0
    for c, x in pairs:
        t0 = time.perf_counter()
        client.report(c, x)
        client.step()
        _ = client.weights
        worst = max(worst, time.perf_counter() - t0)
        assert client.stats()["calls_inflight"] <= 2  # bounded
    # 40 steps against an actor that needs 0.8 s per call: no step waited for it
    assert worst < delay / 4, f"a step took {worst:.3f} s: reporting blocked"  # 0.2 s: generous under load
    assert client.stats()["reports_buffered"] + client.stats()["reports_inflight"] > 0
    assert client.drain(timeout_s=60)
    s = client.stats()
    assert s["reports_sent"] == 40 and s["reports_dropped"] == 0 and s["reports_buffered"] == 0
    # one client: the reports arrive in order, so the state equals sequential updates
    ref = reference_state(pairs)
    assert_same_state(ray.get(actor.state_dict.remote()), ref.state_dict())
    assert client.refresh(timeout_s=30)
    np.testing.assert_allclose(client.weights, ref.weights, rtol=1e-12)
    assert client.version == 40
    with pytest.raises(ValueError):
        client.weights[0] = 1.0  # read-only: the sampler cannot corrupt the cache
    ray.kill(actor)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_weights_refresh_asynchronously_every_sync_interval(ray_session):
    ray = ray_session
    name = "refresh-test"
    actor = create_weight_actor(name, num_classes=K, t=5.0, gamma=0.5, drawable=DRAWABLE)
    try:
        client = WeightClient(name, sync_every=3)
        w0 = client.weights.copy()
        client.report(0, 3.0)  # a hard class 0
        client.step()
        client.step()
        time.sleep(0.5)
        np.testing.assert_array_equal(client.weights, w0)  # not a sync step: nothing sent, nothing fetched
        assert ray.get(actor.get_weights_versioned.remote())[1] == 0
        client.step()  # 3rd step: send the report, ask for weights
        deadline = time.time() + 30
        while client.version == 0 and time.time() < deadline:
            time.sleep(0.05)
            _ = client.weights
        assert client.version == 1
        ref = reference_state([(0, 3.0)], t=5.0, gamma=0.5)
        np.testing.assert_allclose(client.weights, ref.weights, rtol=1e-12)
        assert client.weights[0] > w0[0]
        assert client.max_weight_age_steps >= 2  # read at steps 1-2 with weights from step 0
    finally:
        ray.kill(actor)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_client_survives_actor_kill_and_restart_reloads_snapshot(ray_session, tmp_path):
    ray = ray_session
    name = "kill-test"
    snap_path = tmp_path / "w.json"
    actor = create_weight_actor(name, num_classes=K, t=1.0, gamma=0.3, drawable=DRAWABLE, snapshot_path=snap_path)
    try:
        client = WeightClient(name, sync_every=1)
        pairs = random_pairs(30, seed=5)
        for c, x in pairs[:10]:
            client.report(c, x)
            client.step()
        assert client.drain(timeout_s=30)
        call_with_retry(actor.snapshot)
        snap_updates = read_snapshot(snap_path)["num_updates"]
        assert snap_updates == 10
        pid = ray.get(actor.stats.remote())["pid"]
        os.kill(pid, signal.SIGKILL)  # really kill the actor's process
        # the client goes on without raising, keeps its weights and its reports
        for c, x in pairs[10:]:
            client.report(c, x)
            client.step()
            assert client.weights.sum() == pytest.approx(1.0)  # cached weights stay usable
        assert client.drain(timeout_s=90), client.stats()
        assert client.stats()["actor_errors"] >= 1 and client.stats()["reports_requeued"] >= 1
        stats = call_with_retry(actor.stats)
        assert stats["pid"] != pid and stats["reconstructed"]
        assert stats["restored_updates"] >= snap_updates
        # nothing was applied twice or lost: the restarted actor holds all 30 reports
        assert stats["num_updates"] == 30
        assert_same_state(call_with_retry(actor.state_dict), reference_state(pairs).state_dict())
    finally:
        ray.kill(actor)


@pytest.mark.ray
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sync_every,prefetch,step_s", [(1, 0, 0.0), (3, 2, 0.0), (4, 4, 0.002)])
def test_measured_lag_never_exceeds_the_stated_bound(ray_session, sync_every, prefetch, step_s):
    """The lag L of a batch (this worker's reports missing from the weights it was drawn
    with) against the bound the module states and the loop reports: L <= P + a_max
    (``weights_lag_bound_steps``). One worker, one report per step: the weights' version
    (num_updates) is the number of its reports they contain, so L_n = (n - 1) - version.
    The draws follow a DataLoader with P batches of prefetch: P at iterator creation, then
    batch n + P when batch n is handed out."""
    from collections import deque

    name = f"lag-{sync_every}-{prefetch}"
    actor = create_weight_actor(name, num_classes=K, t=1.0, gamma=0.5, drawable=DRAWABLE)
    try:
        client = WeightClient(name, sync_every=sync_every)
        drawn: deque[int] = deque()

        def draw() -> None:
            _ = client.weights  # what the sampler reads (and where the age is measured)
            drawn.append(client.version)

        for _ in range(prefetch):
            draw()
        lags = []
        for n in range(1, 61):
            draw()
            lags.append((n - 1) - drawn.popleft())
            time.sleep(step_s)
            client.report(n % 4 if n % 4 != 3 else 0, 1.0 + 0.01 * n)
            client.step()
            if n == 30:
                assert client.drain(timeout_s=30)  # a checkpoint in the middle
        bound = prefetch + client.max_weight_age_steps
        assert min(lags) >= 0 and max(lags) > 0, lags
        assert max(lags) <= bound, (lags, client.stats())
        assert client.stats()["actor_errors"] == 0
    finally:
        ray_session.kill(actor)
