"""How fast does the study's search find fair configurations? NSGA-II vs TPE vs random search.

The same small study (``run_study``, the real machinery: Ray Tune + Optuna + Ray Train)
runs with each sampler at the same trial budget, over several search seeds. Every trial
trains the tiny DeepLabv3+ for a few dozen steps on synthetic street scenes written once as
PNG files (``tce_ray.data.synthetic`` images, 48x64) whose 12 classes are merged into 7
(road+bus lane, sidewalk, building, vegetation, sky, vehicle = car+truck, small = person +
pole + sign + bicycle) so that the worst class's IoU is not 0 in every short trial: with
the 12 classes it is 0 even after 1000 steps, and the objectives would not vary.

Search space (every sampler): loss in {focal, tce_image, tce_class, tce_stochastic}, t
(log, 0.05..10), gamma, tilt_signal, weight_floor, focal_gamma. No explicit configurations:
every trial is sampled. The samplers are the study's own (``search.sampler``; TPE and
NSGA-II with the study's defaults, i.e. TPE's 10 random start-up trials and NSGA-II's
population of half the budget).

Score after n trials (in Optuna trial order): the exact 2-D hypervolume of the Pareto front
of (worst IoU, up; IoU std, down) over the trials so far that completed and pass the mIoU
guard (mIoU >= reference mIoU - ``--guard-tol``; the reference is the mean mIoU of MCCE
trials of the same run settings, one per ``--ref-seeds`` seed, run first in the same
session). Reference point of the hypervolume: worst IoU 0, IoU std 0.5 (the largest std
values in [0, 1] can have), so the hypervolume is the area, in that box, dominated by the
front; a front whose worst IoU is 0 everywhere scores 0.

    python -m benchmarks.bench_search --real [--quick] [--trials 12] [--search-seeds 0 1 2]
        [--steps 60] [--concurrent 2] [--work-dir DIR]

Prints the table (hypervolume mean and std over the search seeds per sampler, at several
trial counts) and writes ``benchmarks/out/search_<settings>.json``. Wall time is dominated
by each trial's fixed start-up (see ``bench_trial_startup``); the full run takes about an
hour on 2 shared cores, ``--quick`` a few minutes.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import init_ray, print_table, write_results

SAMPLERS = ("nsga2", "tpe", "random")
HV_REFERENCE = (0.0, 0.5)
"""(worst IoU, IoU std) reference point: the front's area is measured above worst 0 and below std 0.5."""
GUARD_TOL = 0.05
MERGED_CLASSES = ("flat", "sidewalk", "building", "vegetation", "sky", "vehicle", "small")
# raw synthetic ids -> merged ids (see tce_ray.data.synthetic: road 0 ... bus_lane 11; 255 ignore)
_MERGE = {0: 0, 11: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 5, 7: 6, 8: 6, 9: 6, 10: 6, 255: 255}


# ----------------------------------------------------------------------------- scoring
def pareto_front_2d(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points of (worst IoU: maximise, IoU std: minimise), by worst IoU descending."""
    pts = sorted({(float(w), float(s)) for w, s in points}, key=lambda p: (-p[0], p[1]))
    front: list[tuple[float, float]] = []
    best_std = math.inf
    for w, s in pts:
        if s < best_std:
            front.append((w, s))
            best_std = s
    return front


def hypervolume_2d(points: Iterable[tuple[float, float]], reference: tuple[float, float] = HV_REFERENCE) -> float:
    """Exact hypervolume (area) dominated by ``points`` = (worst IoU up, IoU std down) and
    bounded by ``reference`` = (worst_ref, std_ref): the union of the boxes
    ``[worst_ref, w] x [s, std_ref]``. Points not better than the reference in both add nothing.
    Non-finite values raise ValueError.
    """
    pts = []
    for w, s in points:
        w, s = float(w), float(s)
        if not (math.isfinite(w) and math.isfinite(s)):
            raise ValueError(f"hypervolume_2d: point ({w}, {s}) is not finite")
        if w > reference[0] and s < reference[1]:
            pts.append((w, s))
    area = 0.0
    prev_std = reference[1]
    # sweep from the best worst-IoU down: each front point adds the slab between its std and the previous one's
    for w, s in pareto_front_2d(pts):
        area += (w - reference[0]) * (prev_std - s)
        prev_std = s
    return area


def passes_guard(miou: float, reference_miou: float, tol: float = GUARD_TOL) -> bool:
    """The mIoU guard: a trial counts only if its mIoU is at least ``reference_miou - tol``
    (and finite): a configuration that buys fairness by collapsing the model does not count."""
    return math.isfinite(miou) and miou >= reference_miou - tol


def hypervolume_curve(
    trials: Sequence[dict[str, Any]], reference_miou: float, tol: float = GUARD_TOL,
    reference: tuple[float, float] = HV_REFERENCE,
) -> list[float]:
    """Hypervolume after each of ``trials`` (in order; dicts with status, miou, worst_iou,
    iou_std): only completed trials that pass the guard enter the front."""
    kept: list[tuple[float, float]] = []
    out = []
    for t in trials:
        ok = t["status"] == "completed" and all(math.isfinite(float(t[k])) for k in ("miou", "worst_iou", "iou_std"))
        if ok and passes_guard(float(t["miou"]), reference_miou, tol):
            kept.append((float(t["worst_iou"]), float(t["iou_std"])))
        out.append(hypervolume_2d(kept, reference))
    return out


# ----------------------------------------------------------------------------- the study
def write_dataset(root: Path, num_train: int, num_val: int, size: tuple[int, int], seed: int = 0) -> Path:
    """Synthetic scenes as PNG files (raw 12-class labels) under ``root`` (kept if already there)."""
    from PIL import Image

    from tce_ray.data import build_dataset

    marker = root / f"done-{num_train}-{num_val}-{size[0]}x{size[1]}-{seed}"
    if marker.exists():
        return root
    for split, n in (("train", num_train), ("val", num_val)):
        ds = build_dataset("synthetic", split, num_images=n, image_size=size, seed=seed)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = ds.sample(i)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "labels" / split / f"{i:04d}.png")
    marker.touch()
    return root


def remap_list() -> list[int | None]:
    """The 256-entry raw -> merged label table (None: a value that must not occur)."""
    lut: list[int | None] = [None] * 256
    for raw, new in _MERGE.items():
        lut[raw] = new
    return lut


def study_config(name: str, data_root: Path, args: argparse.Namespace, *, sampler: str | None, seed: int,
                 trials: int, configurations: list[dict] | None = None, seeds: list[int] | None = None) -> dict:
    """The study (a dict for ``run_study``)."""
    search: dict[str, Any] = {"num_samples": trials, "seed": seed}
    if sampler is not None:
        search.update(
            sampler=sampler,
            losses=["focal", "tce_image", "tce_class", "tce_stochastic"],
            t={"low": 0.05, "high": 10.0, "log": True},
            gamma={"low": 0.05, "high": 0.5},
            tilt_signal=["batch", "class"],
            weight_floor={"low": 0.0, "high": 0.3},
            focal_gamma={"low": 0.5, "high": 4.0},
        )
    if configurations:
        search["configurations"] = configurations
    if seeds:
        search["seeds"] = seeds
    return {
        "name": name,
        "storage": str(args.work_dir / "studies"),
        "data": {
            "name": "folder",
            "root": str(data_root),
            "options": {"class_names": list(MERGED_CLASSES), "remap": remap_list()},
            "loader_workers": 0,
        },
        "model": {"backbone": "tiny"},
        "loss": {"name": "mcce", "t": 1.0, "gamma": 0.1},
        "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        "train": {
            "steps": args.steps, "batch_size": args.batch_size, "eval_every": args.steps,
            "num_workers": 1, "cpus_per_worker": 1, "max_failures": 0, "seed": 0,
        },
        "objectives": ["worst_iou", "iou_std"],
        "search": search,
        "resources": {"max_concurrent_trials": args.concurrent},
    }


def _rows(df: Any) -> list[dict[str, Any]]:
    df = df.sort_values("number")
    cols = {"trial_id": "trial_id", "number": "number", "status": "status", "miou": "miou",
            "worst_iou": "worst_iou", "iou_std": "iou_std", "loss": "config/loss/name"}
    return [{k: (r[c] if c in r else None) for k, c in cols.items()} for r in df.to_dict("records")]


def run_one(cfg: dict) -> tuple[list[dict[str, Any]], float]:
    """Run the study, or read its results when a finished run of it is in the storage
    (so that an interrupted benchmark continues where it stopped)."""
    import pandas as pd

    from tce_ray.study.runner import run_study

    done = Path(cfg["storage"]) / cfg["name"]
    if (done / "trials.parquet").exists() and (done / "bench_wall_s.txt").exists():
        df = pd.read_parquet(done / "trials.parquet")
        if len(df) == cfg["search"]["num_samples"] + len(cfg["search"].get("configurations", [])) * len(cfg["search"].get("seeds") or [1]) \
                and (df["status"] == "completed").sum() + (df["status"] == "failed").sum() == len(df):
            print(f"{cfg['name']}: results found in {done}, not run again", flush=True)
            return _rows(df), float((done / "bench_wall_s.txt").read_text())
    t0 = time.time()
    result = run_study(cfg, progress=True, resume=(done / "tuner.pkl").exists())
    wall = time.time() - t0
    (done / "bench_wall_s.txt").write_text(f"{wall:.1f}")
    return _rows(result.trials), wall


# ----------------------------------------------------------------------------- main
def summarise(curves: dict[str, list[list[float]]], marks: Sequence[int]) -> list[dict[str, Any]]:
    """Rows: per sampler and trial count, the hypervolume's mean, std and min-max over search seeds."""
    rows = []
    for sampler, per_seed in curves.items():
        for n in marks:
            vals = [c[n - 1] for c in per_seed if len(c) >= n]
            if not vals:
                continue
            rows.append({
                "sampler": sampler, "trials": n, "seeds": len(vals),
                "hv_mean": statistics.fmean(vals),
                "hv_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "hv_min": min(vals), "hv_max": max(vals),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    """The surrogate sampler comparison (``benchmarks.bench_search_surrogate``, issue 22);
    ``--real`` runs the real-trial benchmark below (issue 10, RESULTS.md 3.3)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--real" not in argv:
        from benchmarks.bench_search_surrogate import main as surrogate_main

        return surrogate_main(argv)
    return main_real([a for a in argv if a != "--real"])


def main_real(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 trials, 1 search seed, 20 steps, 1 reference seed")
    parser.add_argument("--trials", type=int, default=12, help="trial budget per study")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[48, 64], metavar=("H", "W"))
    parser.add_argument("--train-images", type=int, default=128)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--ref-seeds", type=int, nargs="+", default=[0, 1, 2], help="train seeds of the reference MCCE trials")
    parser.add_argument("--guard-tol", type=float, default=GUARD_TOL)
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (1 worker, 1 CPU each)")
    parser.add_argument("--work-dir", type=Path, default=None, help="data and study results (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.search_seeds, args.steps, args.ref_seeds = 4, [0], 20, [0]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-search-")
        args.work_dir = Path(tmp.name)
    args.work_dir = args.work_dir.resolve()
    tag = f"{'quick' if args.quick else 'full'}-n{args.trials}-s{len(args.search_seeds)}-steps{args.steps}"
    data_root = write_dataset(args.work_dir / "data", args.train_images, args.val_images, tuple(args.size))

    import ray

    init_ray(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}})
    t_start = time.time()
    studies: list[dict[str, Any]] = []
    try:
        ref_cfg = study_config(f"ref-{tag}", data_root, args, sampler=None, seed=0, trials=0,
                               configurations=[{"name": "mcce"}], seeds=list(args.ref_seeds))
        ref_rows, ref_wall = run_one(ref_cfg)
        ref_mious = [r["miou"] for r in ref_rows if r["status"] == "completed"]
        if not ref_mious:
            raise SystemExit(f"no reference MCCE trial completed: {ref_rows}")
        ref_miou = statistics.fmean(ref_mious)
        print(f"reference MCCE mIoU {ref_miou:.4f} (trials {[round(m, 4) for m in ref_mious]}), {ref_wall:.0f} s", flush=True)
        studies.append({"sampler": "reference (mcce)", "seed": None, "wall_s": ref_wall, "trials": ref_rows})
        for seed in args.search_seeds:  # seeds outer, samplers inner: background load hits the samplers alike
            for sampler in args.samplers:
                cfg = study_config(f"{sampler}-{tag}-seed{seed}", data_root, args,
                                   sampler=sampler, seed=seed, trials=args.trials)
                rows, wall = run_one(cfg)
                curve = hypervolume_curve(rows, ref_miou, args.guard_tol)
                print(f"{sampler} seed {seed}: hypervolume {curve[-1]:.4f} after {len(rows)} trials, {wall:.0f} s", flush=True)
                studies.append({"sampler": sampler, "seed": seed, "wall_s": wall, "trials": rows, "hv_curve": curve})
                report(studies, args, tag, ref_miou, t_start, partial=True)
    finally:
        ray.shutdown()
        if tmp is not None:
            tmp.cleanup()

    report(studies, args, tag, ref_miou, t_start, partial=False)
    return 0


def report(studies: list[dict[str, Any]], args: argparse.Namespace, tag: str, ref_miou: float, t_start: float,
           *, partial: bool) -> None:
    """Print the table and write the JSON (also after each study, marked partial)."""
    curves: dict[str, list[list[float]]] = {}
    for s in studies:
        if "hv_curve" in s:
            curves.setdefault(s["sampler"], []).append(s["hv_curve"])
    marks = sorted({n for n in (1, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, args.trials) if n <= args.trials})
    table = summarise(curves, marks)
    print()
    print_table(table)
    guarded = [sum(passes_guard(t["miou"], ref_miou, args.guard_tol) for t in s["trials"] if t["status"] == "completed")
               for s in studies if "hv_curve" in s]
    print(f"(hypervolume of (worst IoU up, IoU std down) over completed trials with mIoU >= {ref_miou:.3f} - "
          f"{args.guard_tol}; reference point {HV_REFERENCE}; {sum(guarded)} of "
          f"{sum(len(s['trials']) for s in studies if 'hv_curve' in s)} sampled trials passed the guard; "
          f"{time.time() - t_start:.0f} s in all on a shared 2-core machine)")
    write_results(
        f"search_{tag}",
        table,
        {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "reference_miou": ref_miou,
         "hv_reference_point": HV_REFERENCE, "studies": studies, "wall_s": time.time() - t_start,
         "machine": "2 shared CPU cores (up to 7 helpers working at once)", "partial": partial},
    )


if __name__ == "__main__":
    raise SystemExit(main())
