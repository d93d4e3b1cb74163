"""How many (class, loss) reports per second can one ClassWeightActor take, and how long
does a worker wait for fresh weights?

8 concurrent reporters (Ray tasks, ``num_cpus=0``) each send ``--calls`` ``report_many``
calls of ``b`` reports, fire-and-forget with at most 16 calls in flight per reporter (bounded
like the WeightClient's), for b = 1 (one report per call) and b = 100 (batched). Throughput =
all reports / wall time from the first call to the last reply; the actor's ``num_updates``
is checked against the number sent. Latency: the round trip of ``get_weights`` as a
worker sees it (``ray.get(actor.get_weights.remote())`` from another task), idle and while
the 8 batched reporters run. Target: >= 10,000 reports/s batched.

    python -m benchmarks.bench_actor [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import ray

from benchmarks._common import print_table, write_results
from tce_ray.train.weights_actor import ClassWeightActor

K = 19
REPORTERS = 8
MAX_INFLIGHT = 16
TARGET_BATCHED = 10_000.0


@ray.remote(num_cpus=0)
def reporter(actor, calls: int, batch: int, seed: int, start_at: float) -> tuple[int, float, float]:
    """Send ``calls`` report_many calls of ``batch`` reports; returns (reports, first call, last reply) times."""
    rng = np.random.default_rng(seed)
    payloads = [
        (rng.integers(0, K, batch).tolist(), rng.uniform(0.5, 2.0, batch).tolist()) for _ in range(calls)
    ]
    while time.time() < start_at:  # all reporters start together
        time.sleep(0.001)
    inflight: list = []
    t_first = time.time()
    for classes, losses in payloads:
        if len(inflight) >= MAX_INFLIGHT:
            _, inflight = ray.wait(inflight, num_returns=1)
        inflight.append(actor.report_many.remote(classes, losses))
    ray.get(inflight)
    return calls * batch, t_first, time.time()


@ray.remote(num_cpus=0)
def latency_probe(actor, n: int, pause_s: float) -> list[float]:
    """Round trips (ms) of get_weights, one every ``pause_s``."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(actor.get_weights.remote())
        out.append((time.perf_counter() - t0) * 1e3)
        time.sleep(pause_s)
    return out


def throughput(batch: int, calls: int, probe_n: int = 0) -> tuple[dict, list[float]]:
    actor = ClassWeightActor.remote(K, 1.0, 0.1)
    ray.get(actor.get_weights.remote())
    start_at = time.time() + 2.0
    probe = latency_probe.remote(actor, probe_n, 0.01) if probe_n else None
    out = ray.get([reporter.remote(actor, calls, batch, i, start_at) for i in range(REPORTERS)])
    sent = sum(n for n, _, _ in out)
    wall = max(t1 for _, _, t1 in out) - min(t0 for _, t0, _ in out)
    updates = ray.get(actor.stats.remote())["num_updates"]
    lat = ray.get(probe) if probe is not None else []
    ray.kill(actor)
    if updates != sent:
        raise RuntimeError(f"the actor applied {updates} reports but {sent} were sent")
    row = {
        "mode": "one per call" if batch == 1 else f"batched ({batch} per call)",
        "reporters": REPORTERS,
        "reports": sent,
        "calls": REPORTERS * calls,
        "wall_s": round(wall, 3),
        "reports_per_s": round(sent / wall, 1),
        "calls_per_s": round(REPORTERS * calls / wall, 1),
    }
    return row, lat


def latency_idle(n: int) -> list[float]:
    actor = ClassWeightActor.remote(K, 1.0, 0.1)
    ray.get(actor.get_weights.remote())
    lat = ray.get(latency_probe.remote(actor, n, 0.005))
    ray.kill(actor)
    return lat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    calls_single = 200 if args.quick else 1000
    calls_batched = 50 if args.quick else 200
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        ray.get([latency_probe.remote(None, 0, 0.0) for _ in range(REPORTERS + 1)])  # start the worker processes
        single, _ = throughput(1, calls_single)
        batched, lat_busy = throughput(100, calls_batched, probe_n=200)
        lat_idle = latency_idle(300 if not args.quick else 100)
    finally:
        ray.shutdown()
    rows = [single, batched]
    print_table(rows)
    lat_rows = [
        {
            "get_weights round trip": name,
            "n": len(v),
            "median_ms": round(float(np.median(v)), 3),
            "p99_ms": round(float(np.percentile(v, 99)), 3),
            "max_ms": round(float(np.max(v)), 3),
        }
        for name, v in (("idle actor", lat_idle), ("8 batched reporters running", lat_busy))
        if v
    ]
    print()
    print_table(lat_rows)
    ok = batched["reports_per_s"] >= TARGET_BATCHED
    print(f"\nbatched throughput {batched['reports_per_s']:,.0f} reports/s: "
          f"{'meets' if ok else 'MISSES'} the target of {TARGET_BATCHED:,.0f}")
    write_results(
        "bench_actor",
        rows + lat_rows,
        {"quick": args.quick, "cpu_count": os.cpu_count(), "target_batched_reports_per_s": TARGET_BATCHED,
         "meets_target": ok, "reporters": REPORTERS, "max_inflight_per_reporter": MAX_INFLIGHT},
    )


if __name__ == "__main__":
    main()
