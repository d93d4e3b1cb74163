"""The class-weight actor at cluster scale: 16, 64 and 256 simulated workers against ONE actor.

Each simulated worker behaves like a training worker with a :class:`~tce_ray.train.weights_actor.
WeightClient`: every ``--step-ms`` (a training step) it reads its cached weights (the
sampler's draw), buffers one ``(class, loss)`` report, and every ``sync_every`` steps sends
the buffered reports with a request for fresh weights in ONE ``report_and_get`` call, never
waiting for the reply (at most ``max_inflight`` = 4 calls outstanding, as the client does;
a sync skipped at the cap leaves the reports buffered). Replies are adopted when they land
(newest request wins).

Simulation on a small machine: the workers are asyncio coroutines, spread over
``min(8, N)`` Ray actors (processes, ``num_cpus=0``), not N processes: 256 real training
processes do not fit 2 cores and 24 GiB. What is real: the actor (its calls, its CPU time),
the call pattern and rate of N workers, Ray's RPC path. What is not: the workers' compute
(a sleep) and a network between nodes (everything is on loopback). The reporters share the
machine's cores with the actor, so on a small machine the figures are pessimistic for the
actor's own latency; a step cadence the simulation could not keep is reported
(``steps_per_s_achieved`` vs the target), and then the offered load was lower than asked.
Each group process calls the actor once before the clock starts; the first 2 s of steps are
a warm-up, not measured.

Measured per configuration (one JSON each, ``benchmarks/out/bench_actor_scale_n<N>_s<S>.json``):
reports/s and calls/s the actor absorbed, the round trip of ``report_and_get`` (submit ->
reply, p50/p99/max), the staleness of the weights each draw used (own steps since those
weights were requested, p50/p99/max, and seconds), the actor's CPU use (fraction of one
core), and a capacity estimate: the calls/s one actor can take at full CPU, and so the
number of workers it serves at this step time and sync interval.

    python -m benchmarks.bench_actor_scale [--quick] [--workers 16 64 256] [--sync 1 4] [--step-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import numpy as np
import ray

from benchmarks._common import print_table, write_results
from tce_ray.train.weights_actor import ClassWeightActor

K = 19
MAX_INFLIGHT = 4  # WeightClient's default
MAX_PROCESSES = 8


async def _worker(actor, wid: int, sync_every: int, step_s: float, t0: float, start: float, end: float,
                  out: dict) -> None:
    """One simulated worker from ``t0`` to ``end``; measured from ``start`` on (a warm-up before)."""
    rng = random.Random(wid)
    step = 0
    buf_c: list[int] = []
    buf_l: list[float] = []
    inflight = 0
    cached = {"req_step": 0, "req_time": t0, "version": 0}
    tasks = []

    async def call(classes: list[int], losses: list[float], issued: int, t_submit: float) -> None:
        nonlocal inflight
        ref = actor.report_and_get.remote(classes, losses)
        w, version = await asyncio.wrap_future(ref.future())
        t_done = time.time()
        if t_submit >= start:
            out["rtt"].append(t_done - t_submit)
            out["calls"] += 1
        out["reports"] += len(classes)
        inflight -= 1
        if issued >= cached["req_step"]:  # calls complete in order; never go back in time
            cached.update(req_step=issued, req_time=t_submit, version=version)

    t_next = t0 + rng.uniform(0, step_s)  # the workers are not in phase
    while True:
        delay = t_next - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        if now >= end:
            break
        measured = now >= start
        if measured:  # the sampler draws this step's batch with the cached weights
            out["age_steps"].append(step - cached["req_step"])
            out["age_s"].append(now - cached["req_time"])
            out["steps"] += 1
        buf_c.append(rng.randrange(K))
        buf_l.append(rng.uniform(0.5, 2.0))
        step += 1
        if step % sync_every == 0:
            if inflight < MAX_INFLIGHT:
                inflight += 1
                tasks.append(asyncio.ensure_future(call(buf_c, buf_l, step, time.time())))
                buf_c, buf_l = [], []
            elif measured:
                out["skipped_syncs"] += 1
        t_next += step_s
    await asyncio.gather(*tasks)
    if buf_c:  # deliver the rest (not timed): the actor's count is checked against all reports
        await asyncio.wrap_future(actor.report_and_get.remote(buf_c, buf_l).future())
        out["reports"] += len(buf_c)


@ray.remote(num_cpus=0)
class ReporterGroup:
    """A process simulating several workers (asyncio coroutines)."""

    def __init__(self, actor, ids: list[int]) -> None:
        self.actor, self.ids = actor, ids

    def warm_up(self) -> int:
        """One call to the actor: the connection exists before the clock starts."""
        return ray.get(self.actor.get_weights_versioned.remote())[1]

    def run(self, sync_every: int, step_s: float, t0: float, warmup_s: float, duration_s: float) -> dict:
        out = {"rtt": [], "age_steps": [], "age_s": [], "reports": 0, "calls": 0, "steps": 0, "skipped_syncs": 0}
        start, end = t0 + warmup_s, t0 + warmup_s + duration_s

        async def main() -> None:
            await asyncio.gather(*(_worker(self.actor, i, sync_every, step_s, t0, start, end, out) for i in self.ids))

        asyncio.run(main())
        out["rtt"] = np.asarray(out["rtt"], dtype=np.float32)
        out["age_steps"] = np.asarray(out["age_steps"], dtype=np.int32)
        out["age_s"] = np.asarray(out["age_s"], dtype=np.float32)
        return out


def run_config(n: int, sync_every: int, step_s: float, duration_s: float) -> dict:
    actor = ClassWeightActor.options(num_cpus=0).remote(K, 1.0, 0.1)
    ray.get(actor.get_weights.remote())
    procs = min(MAX_PROCESSES, n)
    groups = [ReporterGroup.remote(actor, list(range(p, n, procs))) for p in range(procs)]
    ray.get([g.warm_up.remote() for g in groups])
    warmup_s = 2.0
    t0 = time.time() + 1.0  # every group starts together
    runs = [g.run.remote(sync_every, step_s, t0, warmup_s, duration_s) for g in groups]
    time.sleep(max(0.0, t0 + warmup_s - time.time()))
    cpu0 = ray.get(actor.stats.remote())["cpu_s"]
    outs = ray.get(runs)
    stats = ray.get(actor.stats.remote())
    for g in groups:
        ray.kill(g)
    ray.kill(actor)
    wall = duration_s
    reports = sum(o["reports"] for o in outs)  # warm-up and final flush included
    if stats["num_updates"] != reports:
        raise RuntimeError(f"the actor applied {stats['num_updates']} reports but {reports} were sent")
    measured_reports = sum(o["steps"] for o in outs)  # one report per measured step
    rtt = np.concatenate([o["rtt"] for o in outs]) * 1e3
    age = np.concatenate([o["age_steps"] for o in outs])
    age_s = np.concatenate([o["age_s"] for o in outs])
    calls = sum(o["calls"] for o in outs)
    steps = sum(o["steps"] for o in outs)
    cpu_frac = (stats["cpu_s"] - cpu0) / wall  # includes the final flush: a slight overestimate
    target_rate = 1.0 / step_s
    achieved = steps / n / wall
    calls_per_s = calls / wall
    capacity_calls = calls_per_s / cpu_frac if cpu_frac > 0 else float("nan")  # at 100% of one core
    per_worker_calls = achieved / sync_every
    return {
        "workers": n,
        "sync_every": sync_every,
        "step_ms": round(step_s * 1e3, 1),
        "processes": procs,
        "steps_per_s_target": round(target_rate, 2),
        "steps_per_s_achieved": round(achieved, 2),
        "reports_per_s": round(measured_reports / wall, 1),
        "calls_per_s": round(calls_per_s, 1),
        "rtt_p50_ms": round(float(np.percentile(rtt, 50)), 2),
        "rtt_p99_ms": round(float(np.percentile(rtt, 99)), 2),
        "rtt_max_ms": round(float(rtt.max()), 2),
        "stale_steps_p50": float(np.percentile(age, 50)),
        "stale_steps_p99": float(np.percentile(age, 99)),
        "stale_steps_max": int(age.max()),
        "stale_s_p50": round(float(np.percentile(age_s, 50)), 3),
        "stale_s_p99": round(float(np.percentile(age_s, 99)), 3),
        "skipped_syncs": sum(o["skipped_syncs"] for o in outs),
        "actor_cpu_frac": round(cpu_frac, 3),
        "capacity_calls_per_s": round(capacity_calls, 0),
        "capacity_workers": int(capacity_calls / per_worker_calls) if per_worker_calls > 0 else None,
        "reports": measured_reports,
        "calls": calls,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per configuration (a smoke run)")
    parser.add_argument("--workers", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--sync", type=int, nargs="+", default=[1, 4], help="sync_every values")
    parser.add_argument("--step-ms", type=float, default=100.0, help="simulated training step time")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per configuration")
    args = parser.parse_args()
    duration = 3.0 if args.quick else args.duration
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for s in args.sync:
            for n in args.workers:
                row = run_config(n, s, args.step_ms / 1e3, duration)
                rows.append(row)
                print_table([row])
                write_results(
                    f"bench_actor_scale_n{n}_s{s}", [row],
                    {"quick": args.quick, "cpu_count": os.cpu_count(), "max_inflight": MAX_INFLIGHT,
                     "simulation": f"{n} asyncio workers in {row['processes']} Ray task processes on one machine",
                     "shared_machine": True},
                )
    finally:
        ray.shutdown()
    print()
    cols = ["workers", "sync_every", "steps_per_s_achieved", "reports_per_s", "calls_per_s", "rtt_p50_ms", "rtt_p99_ms",
            "stale_steps_p50", "stale_steps_p99", "stale_s_p50", "stale_s_p99", "actor_cpu_frac", "capacity_workers"]
    print_table([{c: r[c] for c in cols} for r in rows])


if __name__ == "__main__":
    main()
