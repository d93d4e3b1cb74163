"""What does stochastic TCE's machinery cost per training step?

Full runs of ``tce_ray.train`` on 2 CPU workers (DDP, gloo), the same model (DeepLabv3+
"tiny"), data (synthetic) and batch: stochastic TCE (TiltedBatchSampler drawing from the
shared weights + non-blocking reports to the ClassWeightActor, synced every
``--weight-sync-every`` steps; one configuration per value) against MCCE with ordinary
distributed shuffling. The loop records the wall time of every step (data wait included);
the medians over the steps after ``--warmup`` (all runs of a configuration pooled) are
compared. The configurations alternate (``--reps`` rounds) so that background load hits
them alike. Target: median ratio <= 1.03. On a shared
machine wall time is noisy, so the loop's per-step CPU time of rank 0's process (all its
threads; plus, for stochastic TCE, the actor's CPU time per worker-step) is compared too.

A second table times the stochastic machinery alone, in this process: one tilted batch
draw + ``report`` + ``step`` against a live actor, next to one ordinary batch draw.

    python -m benchmarks.bench_step_overhead [--quick] [--steps 70] [--warmup 10] [--reps 2]
        [--height 96 --width 128 --batch-size 4] [--weight-sync-every 1 4] [--loader-workers 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import ray
import torch
from torch.utils.data import DistributedSampler

from benchmarks._common import print_table, write_results
from tce_ray.data import build_dataset
from tce_ray.runspec import RunSpec
from tce_ray.sampling import ClassIndex, TiltedBatchSampler
from tce_ray.train import build_trainer, start_weight_actor
from tce_ray.weights_actor import WeightClient, create_weight_actor

TARGET_RATIO = 1.03


def spec(loss: str, args: argparse.Namespace, sync_every: int = 1) -> RunSpec:
    return RunSpec.model_validate(
        {
            "data": {
                "name": "synthetic",
                "options": {"num_images": args.images, "image_size": [args.height, args.width]},
                "loader_workers": args.loader_workers,
            },
            "loss": {"name": loss, "t": 1.0, "gamma": 0.1},
            "train": {
                "steps": args.steps,
                "eval_every": args.steps,
                "batch_size": args.batch_size,
                "num_workers": 2,
                "max_failures": 0,
                "weight_sync_every": sync_every,
            },
        }
    )


def one_run(loss: str, sync_every: int | None, args: argparse.Namespace, storage: str, tag: str) -> dict:
    """One run (what ``run_training`` does, plus the actor's CPU time before it is killed)."""
    t0 = time.time()
    run, name = spec(loss, args, sync_every or 1), f"bench-{loss}-s{sync_every}-{tag}"
    actor = start_weight_actor(run, name=name, storage_path=storage) if loss == "tce_stochastic" else None
    try:
        actor_cpu0 = ray.get(actor.stats.remote())["cpu_s"] if actor else 0.0
        result = build_trainer(run, name=name, storage_path=storage).fit()
        actor_cpu = ray.get(actor.stats.remote())["cpu_s"] - actor_cpu0 if actor else 0.0
    finally:
        if actor is not None:
            ray.kill(actor)
    skip = args.warmup - 1  # the loop never times an attempt's first step
    times = result.return_value["step_times_s"][skip:]
    cpu = result.return_value["step_cpu_times_s"][skip:]
    actor_cpu_per_step = actor_cpu / (args.steps * 2)  # per worker-step, evaluations included
    return {
        "config": config_name(loss, sync_every),
        "run": tag,
        "steps_timed": len(times),
        "median_step_ms": 1e3 * statistics.median(times),
        "p90_step_ms": 1e3 * float(np.percentile(times, 90)),
        "median_cpu_ms": 1e3 * statistics.median(cpu),
        "actor_cpu_ms": 1e3 * actor_cpu_per_step,
        "images_per_s": result.metrics["images_per_s"],
        "wall_s": time.time() - t0,
        "_times": times,
        "_cpu": [c + actor_cpu_per_step for c in cpu],
    }


def config_name(loss: str, sync_every: int | None) -> str:
    return loss if sync_every is None else f"{loss} (sync every {sync_every})"


def machinery_micro(args: argparse.Namespace, n: int = 500) -> list[dict]:
    """Per-step cost (µs) of drawing a batch + reporting, in this process, against a live actor."""
    ds = build_dataset("synthetic", "train", num_images=args.images, image_size=(args.height, args.width))
    index = ClassIndex.from_dataset(ds)
    actor = create_weight_actor("bench-micro", num_classes=ds.num_classes, t=1.0, gamma=0.1,
                                drawable=index.drawable())
    try:
        client = WeightClient("bench-micro", sync_every=1)
        sampler = TiltedBatchSampler(index, client, args.batch_size, num_batches=n + 50, seed=0)
        it = iter(sampler)
        rng = np.random.default_rng(0)
        costs = []
        for i in range(n + 50):
            t0 = time.perf_counter()
            next(it)
            c = sampler.pop_batch_class()
            client.report(c, float(rng.uniform(0.5, 2.0)))
            client.step()
            if i >= 50:
                costs.append(time.perf_counter() - t0)
            time.sleep(0.002)  # a (very short) training step in between
        client.drain()
        dist = DistributedSampler(list(range(args.images)), num_replicas=2, rank=0, shuffle=True, seed=0, drop_last=True)
        plain = []
        for e in range(n // 8 + 1):
            t0 = time.perf_counter()
            dist.set_epoch(e)
            idx = list(dist)
            batches = [idx[i : i + args.batch_size] for i in range(0, len(idx) - args.batch_size + 1, args.batch_size)]
            plain.append((time.perf_counter() - t0) / max(1, len(batches)))
    finally:
        ray.kill(actor)
    return [
        {"per step": "tilted draw + report + step (stochastic TCE)", "median_us": 1e6 * statistics.median(costs),
         "p99_us": 1e6 * float(np.percentile(costs, 99))},
        {"per step": "DistributedSampler batch (MCCE)", "median_us": 1e6 * statistics.median(plain),
         "p99_us": 1e6 * float(np.percentile(plain, 99))},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 pair of 40-step runs")
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--weight-sync-every", type=int, nargs="+", default=[1, 4],
                        help="stochastic-TCE configurations to compare with MCCE (TrainSpec.weight_sync_every)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.reps = 40, 1
    if args.steps - args.warmup < 20:
        parser.error("--steps must exceed --warmup by at least 20")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}})
    configs = [("mcce", None)] + [("tce_stochastic", k) for k in args.weight_sync_every]
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-step-") as storage:
            for rep in range(args.reps):
                for loss, sync_every in configs:
                    rows.append(one_run(loss, sync_every, args, storage, f"r{rep}"))
                    print(f"{rows[-1]['config']} r{rep}: median {rows[-1]['median_step_ms']:.2f} ms", flush=True)
        micro = machinery_micro(args)
    finally:
        ray.shutdown()

    def pooled(key: str, config: str) -> float:
        return statistics.median([t for r in rows if r["config"] == config for t in r[key]])

    base = config_name("mcce", None)
    summary_rows = []
    for loss, sync_every in configs[1:]:
        name = config_name(loss, sync_every)
        mine = [r for r in rows if r["config"] == name]
        theirs = [r for r in rows if r["config"] == base]
        summary_rows.append({
            "stochastic TCE vs MCCE": name,
            "median_step_ms_mcce": 1e3 * pooled("_times", base),
            "median_step_ms": 1e3 * pooled("_times", name),
            "ratio": pooled("_times", name) / pooled("_times", base),
            "ratio_per_rep": " ".join(f"{a['median_step_ms'] / b['median_step_ms']:.3f}" for a, b in zip(mine, theirs)),
            "cpu_ratio": pooled("_cpu", name) / pooled("_cpu", base),
            "meets_target": pooled("_times", name) / pooled("_times", base) <= TARGET_RATIO,
        })
    for r in rows:
        del r["_times"], r["_cpu"]
    print()
    print_table(rows)
    print()
    print_table(micro)
    print()
    print_table(summary_rows)
    print(f"(target: ratio <= {TARGET_RATIO}; cpu_ratio: rank 0's process CPU time per step, plus the "
          "actor's CPU time per worker-step for stochastic TCE)")
    write_results(
        "bench_step_overhead",
        rows + micro + summary_rows,
        {**vars(args), "target_ratio": TARGET_RATIO, "workers": 2, "cpu_count": os.cpu_count()},
    )


if __name__ == "__main__":
    main()
