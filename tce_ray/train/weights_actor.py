"""The shared class-weight state of one stochastic-TCE run (a Ray actor) and its worker-side client.

One run has ONE :class:`~tce_ray.core.tilt.TiltState` (SPEC, "Stochastic TCE"): every
data-parallel worker draws its own class from the shared weights and reports
``(class, signal)`` back. The state lives in a named Ray actor, :data:`ClassWeightActor`,
created by :func:`tce_ray.train.trainer.run_training` (``create_weight_actor``) and found by every
worker with ``ray.get_actor(actor_name(run_name))``.

Survival. The actor is created with ``max_restarts=-1`` and ``max_task_retries=0``: a
killed actor is restarted by Ray, which re-runs ``__init__``; ``__init__`` reloads the
latest snapshot, a JSON file on the run's storage (:class:`~tce_ray.train.run_state.RunState`:
a local path or a URI such as ``s3://...``, so an actor restarted on another node finds
it), replaced atomically every ``snapshot_every`` report calls or ``snapshot_interval_s``
seconds, on demand (:meth:`WeightStore.snapshot`) and after every ``load_state_dict``. A
snapshot that cannot be written during a report is logged and counted
(``stats()["snapshot_errors"]``) and retried at the next one; the report itself stands. Reports that reached the
actor after its last snapshot are lost with it; with ``max_task_retries=0`` no report is
ever applied twice by Ray itself. The training checkpoint carries the full state too (see
``tce_ray.train.trainer``), so a restart of the workers restores exactly the checkpointed state.

Non-blocking reporting (:class:`WeightClient`). A training step never waits for the actor:
reports are buffered, and every ``sync_every`` steps ONE call, ``report_and_get.remote(...)``,
carries them to the actor and brings the fresh weights back; the step does not wait for its
reply, which later reads pick up when it has landed (a ``concurrent.futures.Future`` per call,
completed by Ray's callback: checking it costs ~1 µs, where ``ray.wait(timeout=0)`` on a
pending reply cost ~100 µs per read). At most ``max_inflight``
calls are outstanding; beyond that the reports keep buffering (up to ``max_buffer``, the
oldest dropped beyond it). An unreachable actor (``RayActorError``, including
``ActorUnavailableError`` while it restarts) never stops training: the client keeps its
cached weights, puts the failed reports back in its buffer and sends them at the next sync.

Weight lag (how old the weights a worker samples with may be). Number the steps a worker
trains 1, 2, ...; after step ``n`` the loop calls ``report`` and ``step``. Let ``S`` be
``sync_every`` (``TrainSpec.weight_sync_every``) and ``P`` the DataLoader prefetch depth
(``prefetch_factor * loader_workers`` = 2 per loader process, 0 without loader processes:
the sampler then draws each batch when the step starts). At every ``S``-th step the client
sends its buffered reports and asks for weights in one call, so the weights of the call
issued after step ``i`` contain this worker's reports of steps ``1 .. i`` (one caller's calls
to an actor run in submission order). The DataLoader draws the batch of step ``n`` when it
hands out batch ``n - P``, i.e. at client step ``n - 1 - P`` (the first ``P`` batches when
the iterator starts, at client step 0, which is later), reading the cached weights of age ``a`` (client steps since their
request left; :attr:`WeightClient.max_weight_age_steps` is the largest ``a`` read). So the
batch of step ``n`` misses this worker's reports of at most the

    L <= P + a  <=  P + a_max        steps before it (its *lag*).

``a`` has no bound in ``S`` alone: ``a <= S - 1 + R`` where ``R >= 1`` is the number of
steps a reply takes to be picked up: 1 when the actor answers within a step, more when
steps are shorter than the actor's round trip, while the actor is busy or restarting, and
while ``max_inflight`` calls are outstanding (syncs are then skipped and the reports wait
in the buffer). Measured here (``tests/test_weights_actor.py``, steps of ~0.1 ms, a local
actor): ``S = 1, P = 0`` gave a lag of 26 steps, not ``P + S = 1``. The bound that holds is
therefore the measured one: the training loop reports ``weights_age_steps_max`` (``a_max``,
the maximum over all workers) and ``weights_lag_bound_steps`` = ``a_max + P``. It holds for
every report delivered by its first call; reports put back after an actor error
(``actor_errors`` > 0) arrive with a later call, and reports dropped from a full buffer
(``tilt_reports_dropped``) never. Other workers' reports are applied in the order their calls
reach the actor: one of theirs from step ``m`` is in the weights of this worker's calls that
reach the actor after theirs of the sync point at or after ``m`` (at most ``S - 1`` steps
later, then their call's own latency); no step bound holds for them either.

Concurrent reports from several workers arrive in any order, so multi-worker runs are not
bit-for-bit reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any, Sequence

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from tce_ray.train.run_state import RunState, RunStateError
from tce_ray.core.class_tilt import ClassTiltState, state_from_dict
from tce_ray.core.tilt import TiltState

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
ACTOR_NAME_PREFIX = "tce-class-weights-"


def actor_name(run_name: str) -> str:
    """The Ray actor name of ``run_name``'s class-weight actor (one per run)."""
    if not isinstance(run_name, str) or not run_name.strip():
        raise ValueError(f"run_name must be a non-empty string, got {run_name!r}")
    return ACTOR_NAME_PREFIX + run_name


def state_hash(state: dict[str, Any]) -> str:
    """A short, stable hash of a TiltState ``state_dict`` (canonical JSON, SHA-256).

    Floats go through ``repr`` (exact round trip), so a state that went through JSON or
    ``torch.save`` hashes the same as the original.
    """
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_snapshot(path: str | os.PathLike) -> dict[str, Any] | None:
    """The snapshot a :class:`WeightStore` wrote at ``path`` (a local path or a URI on the
    run's storage); None if there is none."""
    state, key = RunState.for_file(path)
    return _parse_snapshot(state.read_json(key), state.uri(key))


def _parse_snapshot(snap: Any, where: str) -> dict[str, Any] | None:
    if snap is None:
        return None
    if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT or "state" not in snap:
        raise ValueError(
            f"{where} is not a class-weight snapshot (format {SNAPSHOT_FORMAT}); delete it to start "
            "from uniform weights"
        )
    return snap


def _node_id() -> str | None:
    if not ray.is_initialized():  # plain-Python use (get_runtime_context would start Ray)
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not inside Ray (plain-Python use)
        return None


class WeightStore:
    """The body of :data:`ClassWeightActor`: a TiltState plus snapshots (plain Python, testable).

    Args:
        num_classes, t, gamma, drawable, weight_floor: passed to :class:`TiltState`.
        snapshot_path: JSON file the state is saved to and reloaded from in ``__init__``, a
            local path or a URI on the run's storage (``tce_ray.train.run_state``; None: no
            snapshots, a restart starts from uniform weights).
        snapshot_every: snapshot after this many ``report_many`` calls ...
        snapshot_interval_s: ... or when this many seconds passed since the last one.
    """

    def __init__(
        self,
        num_classes: int,
        t: float,
        gamma: float,
        drawable: Sequence[int] | np.ndarray | None = None,
        *,
        weight_floor: float = 0.0,
        snapshot_path: str | os.PathLike | None = None,
        snapshot_every: int = 50,
        snapshot_interval_s: float = 1.0,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        if not snapshot_interval_s > 0:
            raise ValueError(f"snapshot_interval_s must be > 0, got {snapshot_interval_s}")
        self._tilt = TiltState(num_classes, t, gamma, drawable, weight_floor=weight_floor)
        self._snapshot: tuple[RunState, str] | None = (
            RunState.for_file(snapshot_path) if snapshot_path is not None else None
        )
        self._snapshot_every = int(snapshot_every)
        self._snapshot_interval_s = float(snapshot_interval_s)
        self._calls_since_snapshot = 0
        self._last_snapshot_t = time.monotonic()
        self._report_calls = 0
        self.snapshot_errors = 0
        self.restored_updates: int | None = None
        self.restored_from: dict[str, Any] | None = None
        """``node_id`` and ``pid`` of the process that wrote the snapshot restored in ``__init__``."""
        if self._snapshot is not None:
            state, key = self._snapshot
            snap = _parse_snapshot(state.read_json(key), state.uri(key))
            if snap is not None:
                self._load(snap["state"])
                self.restored_updates = self._tilt.num_updates
                self.restored_from = {"node_id": snap.get("node_id"), "pid": snap.get("pid")}
                logger.info(
                    "class-weight state restored from %s (%d updates, written on node %s)",
                    state.uri(key),
                    self.restored_updates,
                    snap.get("node_id"),
                )

    # -- reading ----------------------------------------------------------------------
    def get_weights(self) -> np.ndarray:
        """The sampling distribution over classes (``TiltState.weights``)."""
        return self._tilt.weights

    def get_weights_versioned(self) -> tuple[np.ndarray, int]:
        """``(weights, num_updates)``: the weights and how many reports they contain."""
        return self._tilt.weights, self._tilt.num_updates

    def state_dict(self) -> dict[str, Any]:
        """The TiltState's ``state_dict`` (plain types)."""
        return self._tilt.state_dict()

    def stats(self) -> dict[str, Any]:
        """Diagnostics: num_updates, report_calls, pid, node_id, cpu_s (process CPU time),
        restored_updates, restored_from (writer of the restored snapshot), snapshot_errors, reconstructed."""
        reconstructed = False
        if ray.is_initialized():  # get_runtime_context() would start Ray in plain-Python use
            try:
                reconstructed = bool(ray.get_runtime_context().was_current_actor_reconstructed)
            except Exception:  # noqa: BLE001 - not inside an actor
                reconstructed = False
        return {
            "num_updates": self._tilt.num_updates,
            "report_calls": self._report_calls,
            "pid": os.getpid(),
            "cpu_s": time.process_time(),
            "node_id": _node_id(),
            "restored_updates": self.restored_updates,
            "restored_from": self.restored_from,
            "snapshot_errors": self.snapshot_errors,
            "reconstructed": reconstructed,
        }

    # -- writing ----------------------------------------------------------------------
    def report_many(
        self, classes: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray,
        stats: Sequence[Sequence[float]] = (),
    ) -> int:  # fmt: skip
        """Apply ``(class, loss)`` reports in order (``TiltState.update_many``), or, for the
        class tilt on the loss, the batch reports ``stats`` (``ClassTiltState.update_many``);
        returns num_updates."""
        if isinstance(self._tilt, ClassTiltState):
            if len(classes):
                raise ValueError("this run's state is a class tilt on the loss: it takes batch stats, not (class, loss)")
            self._tilt.update_many(stats)
        else:
            if len(stats):
                raise ValueError("this run's state is stochastic TCE's: it takes (class, loss) reports, not batch stats")
            self._tilt.update_many(classes, losses)
        self._report_calls += 1
        self._calls_since_snapshot += 1
        if self._snapshot is not None and (
            self._calls_since_snapshot >= self._snapshot_every
            or time.monotonic() - self._last_snapshot_t >= self._snapshot_interval_s
        ):
            try:
                self.snapshot()
            except RunStateError as e:  # the reports are applied: keep them, retry the snapshot later
                self.snapshot_errors += 1
                self._last_snapshot_t = time.monotonic()
                logger.warning("class-weight snapshot failed (%d so far): %s", self.snapshot_errors, e)
        return self._tilt.num_updates

    def report_and_get(
        self, classes: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray,
        stats: Sequence[Sequence[float]] = (),
    ) -> tuple[list[float], int]:  # fmt: skip
        """``report_many`` (when there is something to report), then the weights (as a list,
        cheaper to ship than an array) and num_updates: one round trip per sync for a worker."""
        if len(stats):
            self.report_many(classes, losses, stats)
        elif len(classes) or len(losses):
            self.report_many(classes, losses)  # (class, loss) reports: stochastic TCE's signature
        return self._tilt.weights.tolist(), self._tilt.num_updates

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Replace the state (e.g. from a training checkpoint) and snapshot it; returns num_updates.
        A ``ClassTiltState`` state (``kind: class_tilt``) turns the store into the class tilt's."""
        self._load(state)
        self.snapshot()
        return self._tilt.num_updates

    def _load(self, state: dict[str, Any]) -> None:
        if isinstance(state, dict) and state.get("kind") != getattr(self._tilt, "state_dict")().get("kind"):
            self._tilt = state_from_dict(state)  # the other kind of state (validated by its class)
        else:
            self._tilt.load_state_dict(state)

    def snapshot(self) -> str | None:
        """Write the state to the snapshot file now (atomically, on the run's storage);
        returns its location. Raises :class:`~tce_ray.train.run_state.RunStateError` if it cannot."""
        if self._snapshot is None:
            return None
        state, key = self._snapshot
        payload = {
            "format": SNAPSHOT_FORMAT,
            "state": self._tilt.state_dict(),
            "num_updates": self._tilt.num_updates,
            "time": time.time(),
            "node_id": _node_id(),
            "pid": os.getpid(),
        }
        where = state.write_json(key, payload)
        self._calls_since_snapshot = 0
        self._last_snapshot_t = time.monotonic()
        return where


#: The Ray actor (one per run): restarted by Ray when killed, its calls never retried.
ClassWeightActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(WeightStore)


def create_weight_actor(
    run_name: str,
    *,
    num_classes: int,
    t: float,
    gamma: float,
    drawable: Sequence[int] | np.ndarray | None = None,
    weight_floor: float = 0.0,
    snapshot_path: str | os.PathLike | None = None,
    **options: Any,
) -> "ray.actor.ActorHandle":
    """Create (or get, if it exists) ``run_name``'s :data:`ClassWeightActor` and wait until it is up.

    The actor is not detached: it lives as long as the calling process (the run's driver or
    Tune trial), so it outlives worker restarts and dies with the run. ``options`` go to
    ``.options()`` (e.g. ``max_restarts``).
    """
    drawable_list = None if drawable is None else [int(c) for c in np.asarray(drawable).ravel()]
    handle = ClassWeightActor.options(
        name=actor_name(run_name), get_if_exists=True, **options
    ).remote(
        num_classes,
        t,
        gamma,
        drawable_list,
        weight_floor=weight_floor,
        snapshot_path=None if snapshot_path is None else str(snapshot_path),
    )
    ray.get(handle.get_weights.remote())  # surfaces __init__ errors (bad params, bad snapshot) here
    return handle


def find_weight_actor(run_name: str, timeout_s: float = 120.0) -> "ray.actor.ActorHandle":
    """``ray.get_actor(actor_name(run_name))``, waiting up to ``timeout_s`` for it to appear."""
    name = actor_name(run_name)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(name)
        except ValueError:
            if time.monotonic() > deadline:
                raise ValueError(
                    f"no class-weight actor named {name!r}: stochastic TCE needs one per run; "
                    "start training with tce_ray.train.trainer.run_training (it creates the actor), or "
                    "call tce_ray.train.trainer.start_weight_actor before fit()"
                ) from None
            time.sleep(0.2)


class WeightClient:
    """A worker's view of the shared class weights: cached ``.weights``, non-blocking ``report``.

    Args:
        run_name: the run whose actor to find (``ray.get_actor(actor_name(run_name))``);
            ignored when ``actor`` is given.
        sync_every: every this many :meth:`step` calls, send the buffered reports and ask for
            fresh weights, in ONE call (``report_and_get``) whose reply is picked up later.
        max_inflight: at most this many calls outstanding (then reports keep buffering).
        max_buffer: reports kept while the actor is unreachable; the oldest are dropped beyond.
        init_timeout_s: how long the constructor waits for the actor's first weights
            (the only blocking call besides :meth:`drain` and :meth:`refresh`).
        actor: an actor handle to use instead of looking it up by name.

    ``weights`` is read by the :class:`~tce_ray.data.sampling.TiltedBatchSampler` once per batch;
    the training loop calls :meth:`report` once per batch and :meth:`step` once per step.
    Not thread-safe (the sampler runs in the training process's main thread).
    """

    def __init__(
        self,
        run_name: str,
        *,
        sync_every: int = 1,
        max_inflight: int = 4,
        max_buffer: int = 100_000,
        init_timeout_s: float = 120.0,
        actor: "ray.actor.ActorHandle | None" = None,
    ) -> None:
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        self.run_name = run_name
        self.sync_every = int(sync_every)
        self.max_inflight = int(max_inflight)
        self.max_buffer = int(max_buffer)
        self._actor = actor if actor is not None else find_weight_actor(run_name, init_timeout_s)
        self._weights, self._version = self._initial_weights(init_timeout_s)
        self._weights_step = 0  # the client step after which the cached weights were requested
        self._step = 0
        # outstanding report_and_get calls: (reply future, classes, losses, step issued, stats), oldest
        # first; the future (ObjectRef.future(), completed by Ray's callback) keeps its ObjectRef alive
        self._inflight: deque[tuple[Future, list[int], list[float], int, list[list[float]]]] = deque()
        self._buf_classes: deque[int] = deque()
        self._buf_losses: deque[float] = deque()
        self._buf_stats: deque[list[float]] = deque()  # the class tilt's batch reports
        self.reports_sent = 0
        self.reports_dropped = 0
        self.reports_requeued = 0
        self.actor_errors = 0
        self.refreshes = 0
        self.max_weight_age_steps = 0

    def _initial_weights(self, timeout_s: float) -> tuple[np.ndarray, int]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                w, v = ray.get(self._actor.get_weights_versioned.remote(), timeout=max(1.0, timeout_s))
                return self._frozen(w), int(v)
            except (RayActorError, GetTimeoutError) as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"class-weight actor {actor_name(self.run_name)!r} did not answer within "
                        f"{timeout_s} s ({type(e).__name__}: {e})"
                    ) from e
                time.sleep(0.5)

    @staticmethod
    def _frozen(w: np.ndarray) -> np.ndarray:
        w = np.array(w, dtype=np.float64, copy=True)
        w.setflags(write=False)
        return w

    # -- the worker-facing API ----------------------------------------------------------
    @property
    def weights(self) -> np.ndarray:
        """The cached sampling weights (read-only); picks up a finished reply without waiting."""
        self._reap(timeout=0.0)
        self.max_weight_age_steps = max(self.max_weight_age_steps, self._step - self._weights_step)
        return self._weights

    @property
    def version(self) -> int:
        """``num_updates`` of the actor's state the cached weights were computed from."""
        return self._version

    @property
    def actor(self) -> "ray.actor.ActorHandle":
        return self._actor

    def report(self, cls: int, loss: float) -> None:
        """Buffer one ``(class, signal)`` report; sent at the next sync point (never blocks)."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"tilt signal must be finite, got {loss} for class {cls}")
        self._buf_classes.append(int(cls))
        self._buf_losses.append(loss)
        self._trim_buffer()

    def report_stats(self, stats: Sequence[float] | np.ndarray) -> None:
        """Buffer one batch report of the class tilt on the loss (per-class CE sums and counts,
        or confusion counts: ``ClassTiltState.update``); sent at the next sync point."""
        values = np.asarray(stats, dtype=np.float64).ravel()
        if not np.isfinite(values).all():
            raise ValueError(f"class-tilt report must be finite, got {values.tolist()}")
        self._buf_stats.append(values.tolist())
        self._trim_buffer()

    def step(self) -> None:
        """Advance one training step; every ``sync_every`` steps :meth:`sync`."""
        self._step += 1
        if self._step % self.sync_every == 0:
            self.sync()

    def sync(self) -> None:
        """Send the buffered reports with a request for fresh weights (one call; never blocks).

        Skipped while ``max_inflight`` calls are outstanding: the reports stay buffered and
        the outstanding replies bring the weights.
        """
        self._reap(timeout=0.0)
        if len(self._inflight) >= self.max_inflight:
            return
        classes, losses, stats = list(self._buf_classes), list(self._buf_losses), list(self._buf_stats)
        try:
            reply = self._actor.report_and_get.remote(classes, losses, stats).future()
        except RayActorError:  # submission itself can fail for a dead handle
            self.actor_errors += 1
            return
        self._buf_classes.clear()
        self._buf_losses.clear()
        self._buf_stats.clear()
        self._inflight.append((reply, classes, losses, self._step, stats))

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Send everything and wait (up to ``timeout_s``) until every report reached the actor.

        Used before a checkpoint so that the saved state contains every report up to that
        step; the cached weights are fresh afterwards. Returns False (and keeps the
        undelivered reports) if the actor did not answer in time.
        """
        deadline = time.monotonic() + timeout_s
        sent = False
        while True:
            if self._buf_classes or self._buf_stats or not sent:
                self.sync()
                sent = True
            self._reap(timeout=max(0.0, deadline - time.monotonic()))
            if not self._inflight and not self._buf_classes and not self._buf_stats:
                return True
            if time.monotonic() >= deadline:
                return False
            if (self._buf_classes or self._buf_stats) and not self._inflight:
                time.sleep(0.2)  # the actor refused the last call (restarting): try again shortly

    def refresh(self, timeout_s: float = 30.0) -> bool:
        """Fetch fresh weights now (sending buffered reports), waiting up to ``timeout_s``."""
        return self.drain(timeout_s)

    def stats(self) -> dict[str, int]:
        """Counters: reports sent / dropped / requeued / buffered / in flight, calls in flight,
        actor errors, refreshes, the cached weights' version and their largest age (steps)."""
        return {
            "reports_sent": self.reports_sent,
            "reports_dropped": self.reports_dropped,
            "reports_requeued": self.reports_requeued,
            "reports_buffered": len(self._buf_classes) + len(self._buf_stats),
            "reports_inflight": sum(len(c) + len(st) for _, c, _, _, st in self._inflight),
            "calls_inflight": len(self._inflight),
            "actor_errors": self.actor_errors,
            "refreshes": self.refreshes,
            "weights_version": self._version,
            "max_weight_age_steps": self.max_weight_age_steps,
        }

    # -- internals ----------------------------------------------------------------------
    def _trim_buffer(self) -> None:
        while len(self._buf_classes) > self.max_buffer:
            self._buf_classes.popleft()
            self._buf_losses.popleft()
            self.reports_dropped += 1
        while len(self._buf_stats) > self.max_buffer:
            self._buf_stats.popleft()
            self.reports_dropped += 1

    def _reap(self, timeout: float) -> None:
        """Collect finished calls: adopt the newest weights, requeue reports the actor lost.

        ``timeout=0`` never waits: a check of each reply's future (~1 µs) and, only for a
        reply issued at an earlier step whose future is not completed yet, ``ray.wait(timeout=0)``
        on it (Ray's callback that completes the future can lag behind the reply's arrival:
        a late reply is picked up as soon as ``ray.wait`` would have seen it). Otherwise waits
        up to ``timeout`` seconds for every outstanding reply."""
        if not self._inflight:
            return
        if timeout > 0:
            wait_futures([f for f, *_ in self._inflight], timeout=timeout)
        landed: set = set()
        oldest, _, _, issued0, _ = self._inflight[0]
        if not oldest.done() and issued0 < self._step:
            landed = set(ray.wait([oldest.object_ref], timeout=0)[0])
        if not landed and not any(f.done() for f, *_ in self._inflight):
            return
        keep: deque = deque()
        requeue_c: list[int] = []
        requeue_l: list[float] = []
        requeue_s: list[list[float]] = []
        for item in self._inflight:
            reply, classes, losses, issued, stats = item
            if not reply.done() and reply.object_ref not in landed:
                keep.append(item)
                continue
            try:
                w, v = reply.result() if reply.done() else ray.get(reply.object_ref)
            except RayActorError as e:  # died or restarting: the call was not applied (no retries)
                self.actor_errors += 1
                self.reports_requeued += len(classes) + len(stats)
                requeue_c.extend(classes)
                requeue_l.extend(losses)
                requeue_s.extend(stats)
                logger.warning("class-weight actor unavailable (%s); %d reports requeued", type(e).__name__, len(classes))
                continue
            except Exception as e:  # the actor rejected the reports (a bug): never retry them
                self.actor_errors += 1
                self.reports_dropped += len(classes) + len(stats)
                logger.error("class-weight actor rejected %d reports: %s", len(classes) + len(stats), e)
                continue
            self.reports_sent += len(classes) + len(stats)
            if issued >= self._weights_step:  # calls complete in order; never go back in time
                self._weights, self._version, self._weights_step = self._frozen(w), int(v), issued
                self.refreshes += 1
        self._inflight = keep
        if requeue_c or requeue_s:  # older than what is buffered: put them first, keep the order
            self._buf_classes.extendleft(reversed(requeue_c))
            self._buf_losses.extendleft(reversed(requeue_l))
            self._buf_stats.extendleft(reversed(requeue_s))
            self._trim_buffer()


def call_with_retry(method: Any, *args: Any, timeout_s: float = 120.0) -> Any:
    """``ray.get(method.remote(*args))``, retried while the actor is restarting (blocking).

    For the few calls outside training steps (restore, checkpoint); raises the last
    ``RayActorError`` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(method.remote(*args), timeout=timeout_s)
        except RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
