"""The stall watchdog of one training worker: a run that stops making steps fails, with one line.

A worker blocked forever (a collective whose peer is gone, a DataLoader process that never
answers, a lock held by a dead thread) makes Ray Train wait forever: nothing times out.
Each worker therefore runs a :class:`StallWatchdog` thread. The loop calls :meth:`beat`
after every step, every evaluated batch and every report; when no beat came for the
limit (``max(train.stall_timeout, 20 x this attempt's median step)``; ``stall_timeout: 0``
or ``null`` turns it off), the watchdog

1. dumps the Python stack of every thread of the worker (``faulthandler``) into the run's
   state folder, ``<storage>/<run>/tce_state/stalls/rank<r>-<unix time>.txt``;
2. writes :func:`stall_key` (rank ``r``'s last step, the limit, the stack file) there, and
   logs the line;
3. ends the worker process (``os._exit``): a thread blocked in C cannot be interrupted, so
   the process goes, and Ray Train's ``max_failures`` restarts the worker group from the
   last checkpoint like after any other worker failure.

When no restart is left, ``run_training`` turns Ray's "worker died" error into
:class:`RunStalledError` with the one line of :func:`stall_message` (rank(s), last step,
where the stacks are). Rank 0's step in Ray's key-value store
(:mod:`tce_ray.train.step_progress`) is for the progress lines; the watchdog needs no
network: each worker watches itself, so a stalled worker is found whichever rank it is.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import statistics
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from tce_ray.core.redact import redact
from tce_ray.train.run_state import RunState

__all__ = ["STALLS", "StallWatchdog", "RunStalledError", "stall_key", "stall_message", "read_stalls", "STALL_EXIT_CODE",
           "STALL_STEP_FACTOR"]

logger = logging.getLogger(__name__)

STALL_EXIT_CODE = 75
"""The exit status of a worker the watchdog ended."""
STALL_STEP_FACTOR = 20.0
"""The limit is at least this many median steps of the attempt."""
STALLS = "stalls"


class RunStalledError(RuntimeError):
    """A run made no progress for its stall limit on some worker and has no restart left."""


def stall_key(rank: int) -> str:
    """Key (in the run's state) of rank ``rank``'s stall record (JSON)."""
    return f"{STALLS}/rank{int(rank)}.json"


def read_stalls(state: RunState) -> list[dict[str, Any]]:
    """The stall records of the run's latest attempts, by rank."""
    out = []
    for key in state.list(STALLS):
        if key.endswith(".json"):
            try:
                rec = state.read_json(key)
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return sorted(out, key=lambda r: int(r.get("rank", 0)))


def stall_message(run_name: str, records: Sequence[dict[str, Any]]) -> str:
    """The one line: which rank(s) stalled, at which step, for how long, where the stacks are.

    The ranks come lowest step first: a rank behind the others is the likely cause (the
    others wait for it in a collective)."""
    recs = sorted(records, key=lambda r: (int(r["step"]), int(r["rank"])))
    folders = {os.path.dirname(str(r["stacks"])) for r in recs}
    shared = folders.pop() if len(folders) == 1 and all(str(r["stacks"]).endswith(".txt") for r in recs) else None
    ranks = ", ".join(
        f"rank {r['rank']} (last step {r['step']}, "
        + (os.path.basename(str(r["stacks"])) if shared else f"stacks: {r['stacks']}") + ")"
        for r in recs
    )
    limit = max(float(r["limit_s"]) for r in recs)
    where = f"; stacks of every thread in {shared}/" if shared else ""
    return redact(
        f"run {run_name} stalled: no training step or evaluation for {limit:.0f} s on {ranks}{where}; "
        "raise train.stall_timeout if a step can legitimately take that long, or see docs/hangs-and-timeouts.md"
    )


class StallWatchdog:
    """Watches one worker (see the module docstring); ``limit_s`` None or 0: off."""

    def __init__(self, state: RunState, rank: int, limit_s: float | None, *, run_name: str = "",
                 exit_fn: Callable[[int], None] = os._exit, poll_s: float | None = None) -> None:
        self.state, self.rank, self.run_name = state, int(rank), run_name
        self.base_limit = float(limit_s or 0.0)
        self._exit = exit_fn
        self._poll = poll_s if poll_s is not None else min(5.0, max(0.2, self.base_limit / 10))
        self._last_beat = time.monotonic()
        self._step = -1
        self._step_times: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: dict[str, Any] | None = None

    @property
    def enabled(self) -> bool:
        return self.base_limit > 0

    def limit(self) -> float:
        """``max(stall_timeout, 20 x the median step so far)``."""
        med = statistics.median(self._step_times) if self._step_times else 0.0
        return max(self.base_limit, STALL_STEP_FACTOR * med)

    def start(self) -> StallWatchdog:
        if self.enabled and self._thread is None:
            self._last_beat = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name=f"tce-stall-watchdog-rank{self.rank}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def beat(self, step: int | None = None, step_time_s: float | None = None) -> None:
        """Progress: a step (with its time), an evaluated batch or a report."""
        self._last_beat = time.monotonic()
        if step is not None:
            self._step = int(step)
        if step_time_s is not None and len(self._step_times) < 10_000:
            self._step_times.append(float(step_time_s))

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            idle = time.monotonic() - self._last_beat
            if idle > self.limit():
                self._fire(idle)
                return

    def _fire(self, idle: float) -> None:
        when = int(time.time())
        stacks = "(not written)"
        try:
            with tempfile.TemporaryFile() as f:
                faulthandler.dump_traceback(file=f, all_threads=True)
                f.seek(0)
                stacks = self.state.write_bytes(f"{STALLS}/rank{self.rank}-{when}.txt", f.read())
        except Exception as e:  # noqa: BLE001 - the worker must end even if the storage is gone
            stacks = f"(not written: {e})"
        self.fired = {"rank": self.rank, "step": self._step, "idle_s": idle, "limit_s": self.limit(),
                      "stacks": redact(stacks), "time": when, "pid": os.getpid()}
        try:
            self.state.write_json(stall_key(self.rank), self.fired)
            logger.error("%s", stall_message(self.run_name or "?", [self.fired]))
        finally:
            self._exit(STALL_EXIT_CODE)
