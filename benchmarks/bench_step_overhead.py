"""What does stochastic TCE's machinery cost per training step, measured so that 1 % can be told from 3 %?

Part 1, end to end: full runs of ``tce_ray.train.trainer`` (its real worker loop) on 2 CPU workers
(DDP, gloo), the same model (DeepLabv3+ "tiny"), data and batch: MCCE with ordinary
distributed shuffling (A) against stochastic TCE (B: TiltedBatchSampler drawing from the
shared weights + non-blocking reports to the ClassWeightActor, synced every
``--weight-sync-every`` steps; C: the same with ``tilt_signal="class"``, which adds the
per-class CE of every step). The configurations run in interleaved rounds in ONE Ray session,
in ABC CBA ABC ... order, so that slow drifts of the background load hit them alike. Per
round and configuration: the median wall time of the steps after ``--warmup`` (data wait
included) and the median CPU time of rank 0's process per step (all its threads) plus, for
stochastic TCE, the actor's CPU time per worker-step (the actor shares the cores). The unit
of comparison is the round: ratio = B's median / A's median of the same round; the summary
gives the median of those ratios, their interquartile range and a bootstrap 95 % CI of the
median (resampling rounds). Target: median CPU and wall ratios <= 1.01.

Part 2, the machinery alone (the profile of the overhead), in this process against a live
actor, interleaved per repetition: the weights read (``WeightClient.weights``), the tilted
draw, ``pop_batch_class``, ``report``, ``step`` (the sync every S steps, amortised), the
per-class CE + its two ``.item()`` of the class signal at the run's logits shape, and a
``DistributedSampler`` batch for comparison; µs per step, median and p99 of CPU and wall.

    python -m benchmarks.bench_step_overhead [--quick] [--rounds 6] [--steps 80] [--warmup 10]
        [--height 96 --width 128 --batch-size 4] [--weight-sync-every 4] [--signals batch class]
        [--loader-workers 0] [--skip-runs]

Writes ``benchmarks/out/step_overhead_<settings>.json`` (one file per setting). The machine
these figures come from is shared (2 cores, other work running): say so next to them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import ray
import torch
from torch.utils.data import DistributedSampler

from benchmarks._common import init_ray, print_table, write_results
from tce_ray.data import build_dataset
from tce_ray.core.losses import per_class_ce
from tce_ray.train.runspec import RunSpec
from tce_ray.data.sampling import ClassIndex, TiltedBatchSampler
from tce_ray.train.trainer import build_trainer, start_weight_actor
from tce_ray.train.weights_actor import WeightClient, create_weight_actor

TARGET_RATIO = 1.01
MACHINE_NOTE = "2 shared CPU cores (other helpers' work running at the same time)"


# ----------------------------------------------------------------------------- statistics
def quantile(xs: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(xs, dtype=np.float64), q))


def bootstrap_median_ci(xs: Sequence[float], level: float = 0.95, n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the median of ``xs`` (resampling the values with replacement)."""
    x = np.asarray(xs, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(x, size=(n, x.size), replace=True), axis=1)
    a = (1 - level) / 2
    return float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


def ratio_summary(ratios: Sequence[float]) -> dict[str, float]:
    lo, hi = bootstrap_median_ci(ratios)
    return {
        "median": statistics.median(ratios),
        "q25": quantile(ratios, 0.25),
        "q75": quantile(ratios, 0.75),
        "ci95_lo": lo,
        "ci95_hi": hi,
    }


# ----------------------------------------------------------------------------- part 1
def spec(loss: str, args: argparse.Namespace, sync_every: int = 1, signal: str = "batch") -> RunSpec:
    return RunSpec.model_validate(
        {
            "data": {
                "name": "synthetic",
                "options": {"num_images": args.images, "image_size": [args.height, args.width]},
                "loader_workers": args.loader_workers,
            },
            "loss": {"name": loss, "t": 1.0, "gamma": 0.1, "tilt_signal": signal},
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


def configurations(args: argparse.Namespace) -> list[tuple[str, str, int, str]]:
    """(label, loss, sync_every, signal): MCCE first (the baseline), then each stochastic-TCE variant."""
    out = [("mcce", "mcce", 1, "batch")]
    for s in args.weight_sync_every:
        for sig in args.signals:
            out.append((f"tce_stochastic sync {s} signal {sig}", "tce_stochastic", s, sig))
    return out


def one_run(label: str, loss: str, sync_every: int, signal: str, args: argparse.Namespace, storage: str, tag: str) -> dict:
    """One run (what ``run_training`` does, plus the actor's CPU time before it is killed)."""
    t0 = time.time()
    run = spec(loss, args, sync_every, signal)
    name = f"bench-{tag}-{label.replace(' ', '_')}"
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
    actor_cpu_per_step = actor_cpu / (args.steps * 2)  # per worker-step (the evaluation's drain included)
    return {
        "config": label,
        "round": tag,
        "steps_timed": len(times),
        "median_step_ms": 1e3 * statistics.median(times),
        "median_cpu_ms": 1e3 * statistics.median(cpu),
        "actor_cpu_ms": 1e3 * actor_cpu_per_step,
        "cpu_with_actor_ms": 1e3 * (statistics.median(cpu) + actor_cpu_per_step),
        "mean_cpu_ms": 1e3 * (statistics.fmean(cpu) + actor_cpu_per_step),
        "wall_s": time.time() - t0,
    }


def interleaved_runs(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Every configuration once per round, in alternating order; (rows per run, summary rows)."""
    configs = configurations(args)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-step-") as storage:
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for label, loss, sync_every, signal in order:
                rows.append(one_run(label, loss, sync_every, signal, args, storage, f"r{r}"))
                x = rows[-1]
                print(f"round {r} {label}: median step {x['median_step_ms']:.2f} ms, cpu {x['cpu_with_actor_ms']:.2f} ms "
                      f"(actor {x['actor_cpu_ms']:.3f}), {x['wall_s']:.0f} s", flush=True)
    summary = []
    base = configs[0][0]
    for label, *_ in configs[1:]:
        wall, cpu, cpu_mean, cpu_proc = [], [], [], []
        for r in range(args.rounds):
            a = next(x for x in rows if x["round"] == f"r{r}" and x["config"] == base)
            b = next(x for x in rows if x["round"] == f"r{r}" and x["config"] == label)
            wall.append(b["median_step_ms"] / a["median_step_ms"])
            cpu.append(b["cpu_with_actor_ms"] / a["cpu_with_actor_ms"])
            cpu_mean.append(b["mean_cpu_ms"] / a["mean_cpu_ms"])
            cpu_proc.append(b["median_cpu_ms"] / a["median_cpu_ms"])
        sw, sc, sm, sp = ratio_summary(wall), ratio_summary(cpu), ratio_summary(cpu_mean), ratio_summary(cpu_proc)
        summary.append({
            "vs mcce (per-round ratios)": label,
            "rounds": args.rounds,
            "wall_median": sw["median"], "wall_iqr": f"{sw['q25']:.3f}-{sw['q75']:.3f}",
            "wall_ci95": f"{sw['ci95_lo']:.3f}-{sw['ci95_hi']:.3f}",
            "cpu_median": sc["median"], "cpu_iqr": f"{sc['q25']:.3f}-{sc['q75']:.3f}",
            "cpu_ci95": f"{sc['ci95_lo']:.3f}-{sc['ci95_hi']:.3f}",
            "cpu_mean_median": sm["median"],
            "cpu_rank0_only_median": sp["median"],
            "cpu_rank0_only_iqr": f"{sp['q25']:.3f}-{sp['q75']:.3f}",
            "wall_per_round": " ".join(f"{v:.3f}" for v in wall),
            "cpu_per_round": " ".join(f"{v:.3f}" for v in cpu),
            "meets_target": sc["median"] <= TARGET_RATIO and sw["median"] <= TARGET_RATIO,
        })
    return rows, summary


# ----------------------------------------------------------------------------- part 2
def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    c0, t0 = time.thread_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def machinery_profile(args: argparse.Namespace, n: int) -> list[dict]:
    """µs per step of each piece of stochastic TCE's per-step machinery (this process, live actor)."""
    ds = build_dataset("synthetic", "train", num_images=args.images, image_size=(args.height, args.width))
    index = ClassIndex.from_dataset(ds)
    k = ds.num_classes
    actor = create_weight_actor("bench-micro", num_classes=k, t=1.0, gamma=0.1, drawable=index.drawable())
    parts: dict[str, list[tuple[float, float]]] = {}

    def rec(name: str, fn: Callable[[], object]) -> None:
        parts.setdefault(name, []).append(_timed(fn))

    try:
        sync = args.weight_sync_every[0]
        client = WeightClient("bench-micro", sync_every=sync)
        actor_before = ray.get(actor.stats.remote())
        t_loop = time.perf_counter()
        sampler = TiltedBatchSampler(index, client, args.batch_size, num_batches=n + 100, seed=0)
        it = iter(sampler)
        dist = DistributedSampler(list(range(args.images)), num_replicas=2, rank=0, shuffle=True, seed=0, drop_last=True)
        dist_batches: list[list[int]] = []
        epoch = 0
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        logits = torch.randn(args.batch_size, k, args.height, args.width)
        masks = torch.randint(0, k, (args.batch_size, args.height, args.width))
        holder: dict[str, object] = {}

        def draw() -> None:
            holder["batch"] = next(it)

        def weights_read() -> None:
            client.weights

        def class_signal_old() -> None:
            sums, counts = per_class_ce(logits, masks, k)
            c = int(holder["cls"])
            holder["signal"] = sums[c].item() / max(1, int(counts[c].item()))

        pixel_ce = None
        try:  # since the loop reads the class signal from the loss's kept per-pixel CE
            from tce_ray.core.losses import MCCE, class_ce

            keep = MCCE(keep_pixel_ce=True)
            keep(logits, masks)  # the training loss's forward (paid by MCCE anyway)
            pixel_ce = keep.pixel_ce
        except (ImportError, TypeError):  # an older tce_ray without class_ce
            pass

        def class_signal_new() -> None:
            s, n = class_ce(pixel_ce, masks, int(holder["cls"])).tolist()
            holder["signal"] = s / max(1.0, n)

        def plain_batch() -> None:
            nonlocal epoch
            if not dist_batches:
                dist.set_epoch(epoch)
                epoch += 1
                idx = list(dist)
                dist_batches.extend(idx[i : i + args.batch_size] for i in range(0, len(idx) - args.batch_size + 1, args.batch_size))
            dist_batches.pop()

        for i in range(n + 100):
            rec("weights read (WeightClient.weights)", weights_read)
            rec("tilted draw (sampler, weights read included)", draw)
            rec("pop_batch_class", lambda: holder.__setitem__("cls", sampler.pop_batch_class()))
            rec("class signal, before: per_class_ce + 2 .item()", class_signal_old)
            if pixel_ce is not None:
                rec("class signal, now: class_ce on the loss's pixel CE + .tolist()", class_signal_new)
            rec("report", lambda: client.report(holder["cls"], float(rng.uniform(0.5, 2.0))))
            rec(f"step (sync every {sync}, amortised)", client.step)
            rec("DistributedSampler batch (MCCE's draw)", plain_batch)
            time.sleep(0.002)  # a (very short) training step in between: replies land meanwhile
        client.drain()
        actor_stats = ray.get(actor.stats.remote())
        loop_s = time.perf_counter() - t_loop
        idle_s = min(loop_s, 5.0)  # the actor's own background CPU while nobody calls it
        time.sleep(idle_s)
        actor_idle = ray.get(actor.stats.remote())
    finally:
        ray.kill(actor)
    rows = []
    for name, vals in parts.items():
        wall = [w for w, _ in vals[100:]]
        cpu = [c for _, c in vals[100:]]
        rows.append({"per step": name, "wall_median_us": 1e6 * statistics.median(wall),
                     "wall_p99_us": 1e6 * quantile(wall, 0.99), "cpu_median_us": 1e6 * statistics.median(cpu),
                     "cpu_mean_us": 1e6 * statistics.fmean(cpu)})
    reports = max(1, actor_stats["num_updates"] - actor_before["num_updates"])
    busy = actor_stats["cpu_s"] - actor_before["cpu_s"]
    idle_rate = (actor_idle["cpu_s"] - actor_stats["cpu_s"]) / idle_s
    rows.append({"per step": f"actor: CPU per report (its process, Ray's call handling included; a call per {sync})",
                 "cpu_mean_us": 1e6 * busy / reports})
    rows.append({"per step": "actor: the same, less its idle background CPU over the loop",
                 "cpu_mean_us": 1e6 * (busy - idle_rate * loop_s) / reports})
    rows.append({"per step": "actor: idle background CPU, µs per second", "cpu_mean_us": 1e6 * idle_rate})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 40-step runs, batch signal only")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--weight-sync-every", type=int, nargs="+", default=[4],
                        help="stochastic-TCE configurations to compare with MCCE (TrainSpec.weight_sync_every)")
    parser.add_argument("--signals", nargs="+", choices=["batch", "class"], default=["batch", "class"])
    parser.add_argument("--micro-steps", type=int, default=1000)
    parser.add_argument("--skip-runs", action="store_true", help="only part 2 (the machinery profile)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.signals, args.micro_steps = 40, 2, ["batch"], 300
    if args.steps - args.warmup < 20:
        parser.error("--steps must exceed --warmup by at least 20")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    random.seed(0)
    init_ray(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}})
    t0 = time.time()
    try:
        rows, summary = ([], []) if args.skip_runs else interleaved_runs(args)
        micro = machinery_profile(args, args.micro_steps)
    finally:
        ray.shutdown()
    if rows:
        print()
        print_table(rows)
    print()
    print_table(micro)
    if summary:
        print()
        print_table(summary)
        print(f"(target: median per-round ratio <= {TARGET_RATIO}, CPU and wall; cpu: rank 0's process CPU time per "
              f"step (median) plus the actor's CPU time per worker-step; {MACHINE_NOTE})")
    tag = (f"{'quick' if args.quick else 'full'}_{args.height}x{args.width}_b{args.batch_size}_lw{args.loader_workers}"
           f"_sync{'-'.join(map(str, args.weight_sync_every))}{'_microonly' if args.skip_runs else ''}")
    write_results(
        f"step_overhead_{tag}",
        summary + micro + rows,
        {**vars(args), "target_ratio": TARGET_RATIO, "workers": 2, "cpu_count": os.cpu_count(),
         "machine": MACHINE_NOTE, "wall_s": time.time() - t0},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
