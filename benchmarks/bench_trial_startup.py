"""Where does a short trial's time go? The fixed per-trial cost against the steps.

Runs ``tce_ray.train.trainer.run_training`` for the smoke study's run (``studies/smoke.yaml``:
synthetic 48x64, tiny model, 2 workers, 4 steps, an evaluation and a checkpoint every 2)
with every phase timestamped, once for MCCE and once for stochastic TCE, in one Ray
session (Ray's own start is timed too). The worker-side phases are timed by wrapping the
functions the worker loop calls (``build_datasets``, ``_class_index``, ``deeplabv3plus``,
``prepare_model``, ``_connect_weights``, the first batch of the ``DataLoader``, ``_evaluate``,
``_report``) inside the Ray Train workers: the loop itself is not changed.

Phases (seconds, rank 0; wall clock on a shared machine):
    ray_init, weight_actor (driver: data set + class index + actor; stochastic TCE only),
    worker_group_start (fit() called -> the worker's loop starts: Ray Train controller,
    placement group, worker processes, imports, torch.distributed), datasets, class_index,
    model (build + DDP wrap), weights_connect, loader_first_batch, steps (all training
    steps but the first batch's wait), evaluate (all evaluations), report (checkpoints +
    ray.train.report), shutdown (loop returned -> fit() returned), other (the rest).

    python -m benchmarks.bench_trial_startup [--quick] [--steps 4] [--eval-every 2] [--losses mcce tce_stochastic]

Writes ``benchmarks/out/trial_startup_<settings>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import init_ray, print_table, write_results

MACHINE_NOTE = "2 shared CPU cores (other helpers' work running at the same time)"
_LOG_ENV = "TCE_BENCH_STARTUP_LOG"


def _stamp(event: str, **extra: Any) -> None:
    """Append one timestamped event to the file named by $TCE_BENCH_STARTUP_LOG (worker side)."""
    path = os.environ.get(_LOG_ENV)
    if not path:
        return
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    with open(path, "a") as f:
        f.write(json.dumps({"t": time.time(), "event": event, "rank": rank, **extra}) + "\n")


def _timed_call(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _stamp(f"{name}:start")
        try:
            return fn(*args, **kwargs)
        finally:
            _stamp(f"{name}:end")

    return wrapper


def _stamped_loader(loader_cls: Any) -> Any:
    """A DataLoader subclass that stamps its construction and its first batch."""

    class StampedLoader(loader_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _stamp("loader:start")
            super().__init__(*args, **kwargs)

        def __iter__(self) -> Any:
            it = super().__iter__()

            def gen() -> Any:
                first = True
                for item in it:
                    if first:
                        _stamp("loader:first_batch")
                        first = False
                    yield item

            return gen()

    return StampedLoader


def instrumented_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry: wrap the loop's helpers with timestamps, then run the real loop."""
    import ray.train.torch

    import tce_ray.train.trainer as tr

    os.environ[_LOG_ENV] = config["startup_log"]
    _stamp("loop:start")
    for name in ("build_datasets", "_class_index", "deeplabv3plus", "_connect_weights", "_evaluate", "_report"):
        setattr(tr, name, _timed_call(name, getattr(tr, name)))
    ray.train.torch.prepare_model = _timed_call("prepare_model", ray.train.torch.prepare_model)
    tr.DataLoader = _stamped_loader(tr.DataLoader)
    out = tr.train_loop_per_worker({k: v for k, v in config.items() if k != "startup_log"})
    _stamp("loop:end")
    return out


def phases(events: list[dict[str, Any]], t_fit: float, t_fit_end: float, rank: int = 0) -> dict[str, float]:
    """Seconds per phase of ``rank`` from the events (see the module docstring)."""
    ev = [e for e in events if e["rank"] == rank]

    def first(name: str) -> float | None:
        return next((e["t"] for e in ev if e["event"] == name), None)

    def total(name: str) -> float:
        starts = [e["t"] for e in ev if e["event"] == f"{name}:start"]
        ends = [e["t"] for e in ev if e["event"] == f"{name}:end"]
        return sum(b - a for a, b in zip(starts, ends))

    loop_start, loop_end = first("loop:start"), first("loop:end")
    out = {
        "worker_group_start": loop_start - t_fit,
        "datasets": total("build_datasets"),
        "class_index": total("_class_index"),
        "model": total("deeplabv3plus") + total("prepare_model"),
        "weights_connect": total("_connect_weights"),
        "loader_first_batch": first("loader:first_batch") - first("loader:start"),
        "evaluate": total("_evaluate"),
        "report": total("_report"),
        "shutdown": t_fit_end - loop_end,
    }
    # steps: from the first batch to the loop's end, less evaluations and reports
    out["steps"] = (loop_end - first("loader:first_batch")) - out["evaluate"] - out["report"]
    return out


def one(loss: str, args: argparse.Namespace, storage: str) -> dict[str, Any]:
    import ray

    import tce_ray.train.trainer as tr
    from tce_ray.study.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml")
    run = cfg.run_for({"name": loss})
    run.train.steps, run.train.eval_every = args.steps, args.eval_every
    name = f"startup-{loss}-{int(time.time())}"
    log = Path(storage) / f"{name}.jsonl"
    t0 = time.time()
    actor = tr.start_weight_actor(run, name=name, storage_path=storage) if loss == tr.STOCHASTIC else None
    t_actor = time.time()
    original, original_config = tr.train_loop_per_worker, tr.trainer_config

    def config_with_log(*a: Any, **kw: Any) -> dict[str, Any]:
        return {**original_config(*a, **kw), "startup_log": str(log)}

    tr.train_loop_per_worker, tr.trainer_config = instrumented_loop, config_with_log  # looked up at call time
    try:
        trainer = tr.build_trainer(run, name=name, storage_path=storage)
    finally:
        tr.train_loop_per_worker, tr.trainer_config = original, original_config
    t_fit = time.time()
    try:
        result = trainer.fit()
    finally:
        t_fit_end = time.time()
        if actor is not None:
            ray.kill(actor, no_restart=True)
    if result.error is not None:
        raise result.error
    events = [json.loads(line) for line in log.read_text().splitlines()]
    p = {"weight_actor": t_actor - t0, "build_trainer": t_fit - t_actor, **phases(events, t_fit, t_fit_end)}
    p["total"] = t_fit_end - t0
    p["other"] = p["total"] - sum(v for k, v in p.items() if k != "total")
    return {"loss": loss, **p}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MCCE only")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--losses", nargs="+", default=["mcce", "tce_stochastic"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.losses = ["mcce"]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    t0 = time.time()
    init_ray(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}})
    t_ray = time.time() - t0
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as storage:
            for r in range(args.repeats):
                for loss in args.losses:
                    rows.append({"repeat": r, **one(loss, args, storage)})
                    print(f"{loss} repeat {r}: {rows[-1]['total']:.1f} s", flush=True)
    finally:
        t1 = time.time()
        ray.shutdown()
        t_shutdown = time.time() - t1
    print_table(rows)
    print(f"(ray.init {t_ray:.1f} s, ray.shutdown {t_shutdown:.1f} s; rank 0's phases, seconds; {MACHINE_NOTE})")
    tag = f"{'quick' if args.quick else 'full'}_steps{args.steps}_eval{args.eval_every}"
    write_results(f"trial_startup_{tag}", rows, {**vars(args), "ray_init_s": t_ray, "ray_shutdown_s": t_shutdown,
                                                  "machine": MACHINE_NOTE, "run": "studies/smoke.yaml"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
