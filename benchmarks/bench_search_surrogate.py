"""Sampler comparison on a surrogate objective: samplers x search seeds x budgets (12, 20, 30).

``python -m benchmarks.bench_search`` runs this (``--real`` runs the first benchmark, real
trials through Ray). Each study is the study's own code path without Ray: a
:class:`~tce_ray.study.config.StudyConfig` parsed from a dict, the sampler from
:func:`tce_ray.study.search_space.build_sampler`, the explicit configurations queued by
``SearchSpace.enqueue`` and sampled by ``SearchSpace.__call__`` (the define-by-run space), the
front guard's constraint set by :func:`tce_ray.study.guarded_search.record_guard` before each
tell, 2 trials asked at a time (a study's ``max_concurrent_trials: 2``). Each trial's metrics
come from :mod:`benchmarks.search_surrogate` (CamVid-shaped, with seed noise; see there why).

The space (harder than RESULTS.md 3.3's): losses {focal, tce_image, tce_class,
tce_stochastic}, t log [0.05, 10], gamma [0.05, 1], tilt_signal, weight_floor [0, 0.5],
focal_gamma [0.5, 5], image_power [0, 2], class_crop; 4 explicit configurations first (MCCE
= the guard's reference, focal, class-level TCE t = 1, stochastic TCE t = 1), as the shipped
studies do; the budget counts them. Score: the exact 2-D hypervolume of (worst IoU up,
IoU std down) of the trials with mIoU >= 0.387 - 0.05 (MCCE's noise-free mIoU minus the
guard's max_drop), reference point (0, 0.5). Significance: one-sided Mann-Whitney U (scipy)
and Welch's t (tce_ray.core.stats) of each sampler's hypervolumes over the search seeds
against random search's at the same budget and at 30 trials.

    python -m benchmarks.bench_search [--budgets 12 20 30] [--search-seeds 0 ... 9]
        [--samplers random nsga2 ...] [--quick]

``--objective real`` trains every trial instead (:mod:`benchmarks.search_real_trial`: the
study's trial run, in this process, no Ray; RESULTS.md 3.3's synthetic scenes with 7 merged
classes, the tiny model, ``--steps`` steps of batch 8, train seed 0; each distinct config
trained once and looked up after). The guard's reference is then that objective's MCCE mIoU.

One JSON per (sampler, budgets, seeds) in ``benchmarks/out/search_<objective>_*.json`` and
a summary ``search_<objective>_summary_<samplers>_<budgets>_s<seeds>.json`` (objective:
``surrogate`` or ``real<steps>``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import print_table, write_results
from benchmarks.bench_search import HV_REFERENCE, hypervolume_curve
from benchmarks.search_surrogate import MCCE, surrogate_trial

SAMPLERS: dict[str, dict[str, Any]] = {
    "random": {"sampler": "random"},
    "nsga2": {"sampler": "nsga2"},  # the default before issue 22: population total // 2
    "nsga2_pop4": {"sampler": "nsga2", "population_size": 4},
    "tpe": {"sampler": "tpe"},  # Optuna's defaults: 10 random start-up trials
    "tpe_scaled": {"sampler": "tpe_scaled"},
    "gp": {"sampler": "gp"},
    "auto": {},  # no search.sampler: what a study gets by default
}
SPACE: dict[str, Any] = {
    "losses": ["focal", "tce_image", "tce_class", "tce_stochastic"],
    "t": {"low": 0.05, "high": 10.0, "log": True},
    "gamma": {"low": 0.05, "high": 1.0},
    "tilt_signal": ["batch", "class"],
    "weight_floor": {"low": 0.0, "high": 0.5},
    "focal_gamma": {"low": 0.5, "high": 5.0},
    "image_power": {"low": 0.0, "high": 2.0},
    "class_crop": [False, True],
}
CONFIGURATIONS = [
    {"name": "mcce"},
    {"name": "focal", "focal_gamma": 2.0},
    {"name": "tce_class", "t": 1.0},
    {"name": "tce_stochastic", "t": 1.0, "gamma": 0.1, "tilt_signal": "batch"},
]
GUARD_DROP = 0.05


def study_config(sampler: str, budget: int, seed: int, run_sections: dict[str, Any] | None = None) -> Any:
    """The benchmark's StudyConfig for one (sampler, budget, search seed); ``run_sections``:
    the data/model/optim/train sections of the real objective's studies (none for the surrogate)."""
    from tce_ray.study.config import parse_config

    search = {**SAMPLERS[sampler], **SPACE, "seed": seed, "configurations": CONFIGURATIONS,
              "num_samples": budget - len(CONFIGURATIONS)}
    return parse_config({
        "name": f"surrogate-{sampler}-n{budget}-seed{seed}", "storage": "/tmp/unused",
        "loss": {"name": "mcce", "t": 1.0, "gamma": 0.1}, "objectives": ["worst_iou", "iou_std"],
        "front_guard": {"metric": "miou", "max_drop": GUARD_DROP}, "search": search, **(run_sections or {}),
    })


def run_study(sampler: str, budget: int, seed: int, concurrent: int = 2,
              objective: Callable[[dict[str, Any], int], dict[str, float]] | None = None,
              run_sections: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One study: its trials in Optuna order (dicts as hypervolume_curve reads them).
    ``objective(config, trial_number)`` gives a trial's metrics (default: the surrogate)."""
    import optuna

    from tce_ray.study.guarded_search import record_guard
    from tce_ray.study.search_space import CONFIGURATION_ATTR, SearchSpace, build_sampler

    cfg = study_config(sampler, budget, seed, run_sections)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=build_sampler(cfg.search, 2))
    space = SearchSpace.from_config(cfg)
    space.enqueue(study)
    guard, rows = cfg.guard(), []
    while len(rows) < budget:
        batch = [study.ask() for _ in range(min(concurrent, budget - len(rows)))]
        configs = [space(t) for t in batch]  # all asked before any is told: 2 trials at a time
        for trial, config in zip(batch, configs):
            if objective is None:
                r = surrogate_trial(config, np.random.default_rng([seed, trial.number]))
            else:
                r = objective(config, trial.number)
            record_guard(study, trial, r["miou"], guard, configuration_attr=CONFIGURATION_ATTR)
            study.tell(trial, [r["worst_iou"], r["iou_std"]])
            rows.append({"number": trial.number, "status": "completed", "loss": config["loss/name"],
                         "config": {k: v for k, v in config.items() if not k.startswith("study/")}, **r})
    return rows


def _tests(vals: list[float], base: list[float]) -> dict[str, float]:
    """One-sided Mann-Whitney U p (vals > base) and Welch's two-sided p."""
    from scipy.stats import mannwhitneyu

    from tce_ray.core.stats import welch_t_test

    mw = float(mannwhitneyu(vals, base, alternative="greater").pvalue) if len(vals) > 1 and len(base) > 1 else float("nan")
    return {"p_mw": mw, "p_welch": welch_t_test(vals, base).p}


def summarise(hv: dict[tuple[str, int], list[float]], budgets: list[int]) -> list[dict[str, Any]]:
    """Rows per (sampler, budget): hypervolume mean/std/min/max and the tests against random search."""
    rows, top = [], max(budgets)
    for (sampler, budget), vals in hv.items():
        row: dict[str, Any] = {"sampler": sampler, "trials": budget, "seeds": len(vals),
                               "hv_mean": statistics.fmean(vals), "hv_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                               "hv_min": min(vals), "hv_max": max(vals)}
        if sampler != "random":
            for ref_budget, tag in ((budget, "same"), (top, f"rand{top}")):
                base = hv.get(("random", ref_budget))
                if base:
                    row.update({f"{k}_vs_{tag}": v for k, v in _tests(vals, base).items()})
        rows.append(row)
    return rows


def real_sections(work_dir: Path, steps: int, size: tuple[int, int] = (48, 64), train_images: int = 128,
                  val_images: int = 48) -> dict[str, Any]:
    """The data/model/optim/train sections of the real objective's studies: RESULTS.md 3.3's
    synthetic scenes (PNG files written once under ``work_dir``, 12 classes merged into 7), the
    tiny DeepLabv3+, ``steps`` SGD steps of batch 8, one evaluation at the end, train seed 0."""
    from benchmarks.bench_search import MERGED_CLASSES, remap_list, write_dataset

    root = write_dataset(work_dir / "data", train_images, val_images, size)
    return {
        "data": {"name": "folder", "root": str(root), "loader_workers": 0,
                 "options": {"class_names": list(MERGED_CLASSES), "remap": remap_list()}},
        "model": {"backbone": "tiny"},
        "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        "train": {"steps": steps, "batch_size": 8, "eval_every": steps, "num_workers": 1, "cpus_per_worker": 1,
                  "max_failures": 0, "seed": 0},
    }


def first_configuration(sections: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trial config of the first explicit configuration (MCCE, the guard's reference)."""
    import optuna

    from tce_ray.study.search_space import SearchSpace

    cfg = study_config("random", 12, 0, sections)
    study = optuna.create_study(directions=["maximize", "minimize"])
    space = SearchSpace.from_config(cfg)
    space.enqueue(study)
    return space(study.ask())


class CachedRealObjective:
    """Real trials (:class:`benchmarks.search_real_trial.RealTrials`), each distinct config
    trained once: a trial is deterministic (train seed 0, one thread), so the explicit
    configurations every study starts with, and a config two studies both ask, are looked up."""

    def __init__(self, sections: dict[str, Any], work_dir: Path) -> None:
        from benchmarks.search_real_trial import RealTrials

        self.trials = RealTrials(study_config("random", 12, 0, sections), work_dir / "cache", threads=1)
        self.cache: dict[str, dict[str, float]] = {}
        self.trained, self.seconds = 0, 0.0

    def __call__(self, config: dict[str, Any], number: int) -> dict[str, float]:
        import json

        key = json.dumps({k: v for k, v in sorted(config.items()) if not k.startswith("study/")}, default=str)
        if key not in self.cache:
            t0 = time.time()
            self.cache[key] = self.trials(config)
            self.trained, self.seconds = self.trained + 1, self.seconds + time.time() - t0
        return dict(self.cache[key])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[12, 20, 30])
    p.add_argument("--search-seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="budgets 12, 2 seeds, random + auto (a smoke run)")
    p.add_argument("--objective", choices=["surrogate", "real"], default="surrogate",
                   help="real: train each trial in this process (benchmarks/search_real_trial.py), no Ray")
    p.add_argument("--steps", type=int, default=60, help="real objective: SGD steps per trial")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/tce-bench-search-real"),
                   help="real objective: the data and the class-index cache")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.search_seeds, args.samplers = [12], [0, 1], ["random", "auto"]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ref_miou, hv, t0 = MCCE[0], {}, time.time()
    objective, sections, kind = None, None, "surrogate"
    if args.objective == "real":
        kind = f"real{args.steps}"
        sections = real_sections(args.work_dir, args.steps)
        objective = CachedRealObjective(sections, args.work_dir)
        mcce = objective(first_configuration(sections), -1)
        ref_miou = mcce["miou"]
        print(f"real objective: MCCE reference {mcce}", flush=True)
    tag = f"n{'-'.join(map(str, args.budgets))}_s{len(args.search_seeds)}{'_quick' if args.quick else ''}"
    for sampler in args.samplers:
        studies, ts = [], time.time()
        for budget in args.budgets:
            for seed in args.search_seeds:
                rows = run_study(sampler, budget, seed, args.concurrent, objective, sections)
                curve = hypervolume_curve(rows, ref_miou, GUARD_DROP, HV_REFERENCE)
                hv.setdefault((sampler, budget), []).append(curve[-1])
                studies.append({"budget": budget, "seed": seed, "hv_curve": curve, "trials": rows})
        print(f"{sampler}: {len(studies)} studies, {time.time() - ts:.0f} s", flush=True)
        write_results(f"search_{kind}_{sampler}_{tag}", summarise({k: v for k, v in hv.items() if k[0] == sampler}, args.budgets),
                      {**vars(args), "work_dir": str(args.work_dir), "reference_miou": ref_miou, "sampler": sampler, "search": SAMPLERS[sampler], "studies": studies})
    table = summarise(hv, args.budgets)
    print_table(table)
    if objective is not None:
        print(f"real objective: {objective.trained} trials trained in {objective.seconds:.0f} s, "
              f"{len(objective.cache)} distinct configs", flush=True)
    print(f"(hypervolume of (worst IoU up, IoU std down), mIoU >= {ref_miou} - {GUARD_DROP}, reference point "
          f"{HV_REFERENCE}; p: one-sided Mann-Whitney / Welch vs random search; {time.time() - t0:.0f} s)")
    write_results(f"search_{kind}_summary_{'-'.join(args.samplers)}_{tag}", table,
                  {**vars(args), "work_dir": str(args.work_dir), "space": SPACE, "configurations": CONFIGURATIONS,
                   "reference_miou": ref_miou, "wall_s": time.time() - t0,
                   **({"trained": objective.trained, "train_s": objective.seconds} if objective else {})})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
