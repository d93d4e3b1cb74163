"""The front guard (tce_ray.core.front_guard): a model that predicts one class everywhere never
lands on the Pareto front, in the result tables nor in Optuna's view of the study."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest

from tce_ray.study.config import ConfigError, parse_config
from tce_ray.core.front_guard import (
    GUARD_CONSTRAINT,
    UNVERIFIED,
    FrontGuard,
    constraint_value,
    guard_bound,
)
from tce_ray.core.objectives import get_objective
from tce_ray.study.guarded_search import record_guard
from tce_ray.results.tables import (
    GUARD_COLUMN,
    StudyTables,
    TrialRecord,
    collect_trials,
    group_table,
    pareto_front,
    rank_trials,
    read_tables,
    write_tables,
)
from tce_ray.study.search_space import CONFIGURATION_ATTR

OBJ = {"worst_iou": "max", "iou_std": "min"}
K = 11
GUARD = FrontGuard(reference=0, max_drop=0.05)


def one_class_iou(share: float = 0.004) -> np.ndarray:
    """Predicting class 0 everywhere: its IoU is its pixel share, every other class 0."""
    u = np.zeros(K)
    u[0] = share
    return u


def honest_iou(rng: np.random.Generator, level: float) -> np.ndarray:
    """A model that learned the frequent classes: the two rarest still at 0 (as on CamVid)."""
    u = np.clip(level + 0.1 * rng.standard_normal(K), 0.05, 0.95)
    u[-2:] = 0.0
    return u


def record(tid: str, loss: str, iou: np.ndarray, *, conf: int, seed: int, step: int = 8) -> TrialRecord:
    m = {"step": step, "loss": 0.5, "miou": float(np.mean(iou))}
    m.update({o: get_objective(o)(iou) for o in OBJ})  # the registered objectives, independent of results.py
    m.update({f"iou/c{i}": float(v) for i, v in enumerate(iou)})
    study = {"configuration": conf, "number": len(tid), "seed": seed}
    return TrialRecord(tid, {"loss": {"name": loss}, "study": study}, m, None, None, "")


def study_records(with_reference: bool = True) -> list[TrialRecord]:
    rng = np.random.default_rng(0)
    recs = []
    for seed in range(3):
        if with_reference:
            recs.append(record(f"mcce{seed}", "mcce", honest_iou(rng, 0.55), conf=0, seed=seed))
        recs.append(record(f"tce{seed}", "tce_class", honest_iou(rng, 0.6), conf=1, seed=seed))
        recs.append(record(f"one{seed}", "focal", one_class_iou(0.004 + 0.001 * seed), conf=2, seed=seed))
    return recs


def test_one_class_model_dominates_without_the_guard_and_never_reaches_the_front_with_it():
    trials, _ = collect_trials(study_records(), OBJ, total_steps=8)
    one = trials["trial_id"].str.startswith("one")
    # the failure the guard exists for: worst 0 like everyone, std ~0.001: it dominates
    plain = rank_trials(trials.drop(columns=[GUARD_COLUMN], errors="ignore"), OBJ)
    assert (plain.loc[one, "pareto_rank"] == 0).any()
    assert not (plain.loc[~one, "pareto_rank"] == 0).any()

    guarded, _ = collect_trials(study_records(), OBJ, total_steps=8, guard=GUARD)
    front = pareto_front(guarded, OBJ)
    assert len(front) and not front["trial_id"].str.startswith("one").any()
    g_one = guarded[guarded["trial_id"].str.startswith("one")]
    assert (g_one["pareto_rank"] == -1).all()
    ref = np.mean([r.metrics["miou"] for r in study_records() if r.trial_id.startswith("mcce")])
    for _, r in g_one.iterrows():
        assert r[GUARD_COLUMN] == f"violates front guard (mIoU {100 * r['miou']:.2f} % < bound {100 * (ref - 0.05):.2f} %)"
    # the honest trials are ranked among themselves
    assert (guarded.loc[~guarded["trial_id"].str.startswith("one"), "pareto_rank"] >= 0).all()


def test_bound_is_the_reference_mean_over_its_completed_seeds_minus_max_drop():
    t = pd.DataFrame({
        "trial_id": list("abcdef"),
        "configuration": [0, 0, 0, 1, 1, 0],
        "status": ["completed"] * 5 + ["interrupted"],
        "miou": [0.50, 0.60, 0.55, 0.5001, 0.4999, 0.01],  # the interrupted reference does not count
        "worst_iou": [0.1, 0.1, 0.1, 0.3, 0.4, 0.5],
        "iou_std": [0.2, 0.2, 0.2, 0.1, 0.1, 0.0],
    })
    r = rank_trials(t, OBJ, GUARD)  # bound = 0.55 - 0.05 = 0.50
    assert r["pareto_rank"].tolist()[3:5] == [0, -1]  # 0.5001 passes, 0.4999 does not
    assert r.loc[4, GUARD_COLUMN] == "violates front guard (mIoU 49.99 % < bound 50.00 %)"
    assert r.loc[5, GUARD_COLUMN] == "" and r.loc[5, "pareto_rank"] == -1  # not completed: not ranked, no note
    assert guard_bound([0.5, 0.6, 0.55, float("nan")], 0.05) == (pytest.approx(0.5), 3)
    assert math.isnan(guard_bound([], 0.05)[0])


def test_no_trial_is_ranked_while_the_reference_has_not_finished():
    trials, _ = collect_trials(study_records(with_reference=False), OBJ, total_steps=8, guard=GUARD)
    assert (trials["pareto_rank"] == -1).all()
    assert set(trials[GUARD_COLUMN]) == {"front guard: reference configuration #0 not finished (no bound yet)"}
    assert pareto_front(trials, OBJ).empty


def test_groups_below_the_bound_are_not_ranked():
    trials, _ = collect_trials(study_records(), OBJ, total_steps=8, guard=GUARD)
    groups = group_table(trials, OBJ, GUARD)
    by = dict(zip(groups["label"].str.split().str[0], groups["pareto_rank"]))
    assert by["focal"] == -1 and by["mcce"] >= 0 and by["tce_class"] >= 0
    assert group_table(trials, OBJ).set_index("label")["pareto_rank"].filter(like="focal").iloc[0] == 0  # unguarded


def test_the_guard_survives_the_files(tmp_path):
    trials, hist = collect_trials(study_records(), OBJ, total_steps=8, guard=GUARD)
    meta = {"objectives": [{"name": n, "mode": m} for n, m in OBJ.items()], "front_guard": GUARD.to_meta()}
    write_tables(tmp_path, StudyTables(trials, hist, pareto_front(trials, OBJ), meta))
    back = read_tables(tmp_path)
    assert back.front_guard == GUARD
    # ranking the read table again without the guard respects its front_guard column
    assert not pareto_front(back.trials.drop(columns=["pareto_rank"]), OBJ)["trial_id"].str.startswith("one").any()


def test_guard_validation():
    with pytest.raises(ValueError, match="reference"):
        FrontGuard(reference=-1)
    with pytest.raises(ValueError, match="max_drop"):
        FrontGuard(reference=0, max_drop=2.0)
    with pytest.raises(ValueError, match="metric"):
        FrontGuard(reference=0, metric="worst_iou")
    assert FrontGuard.from_meta(None) is None


def _study(front_guard, configurations=None) -> dict:
    return {
        "name": "g", "data": {"name": "synthetic"}, "loss": {"name": "mcce"},
        "search": {"configurations": configurations or [{"name": "focal"}, {"name": "mcce"}]},
        "front_guard": front_guard,
    }


def test_study_config_resolves_and_checks_the_reference():
    assert parse_config(_study({})).guard() == FrontGuard(reference=1, max_drop=0.05)  # the first mcce
    assert parse_config(_study({"reference": 0, "max_drop": 0.1})).guard() == FrontGuard(reference=0, max_drop=0.1)
    assert parse_config({k: v for k, v in _study({}).items() if k != "front_guard"}).guard() is None
    with pytest.raises(ConfigError, match=r"front_guard\.reference: configuration index 2 does not exist"):
        parse_config(_study({"reference": 2}))
    with pytest.raises(ConfigError, match="no mcce one"):
        parse_config(_study({}, [{"name": "focal"}]))
    with pytest.raises(ConfigError, match="front_guard.max_drop"):
        parse_config(_study({"max_drop": -0.1}))
    with pytest.raises(ConfigError, match="unknown key 'drop'"):
        parse_config(_study({"drop": 0.1}))


# ----------------------------------------------------------------------------- Optuna
def _tell(study, values, miou, conf=None):
    trial = study.ask()
    if conf is not None:
        trial.set_user_attr(CONFIGURATION_ATTR, conf)
    c = record_guard(study, trial, miou, GUARD, configuration_attr=CONFIGURATION_ATTR)
    study.tell(trial, values)
    return trial.number, c


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_optuna_constraint_keeps_a_one_class_model_off_its_front(sampler):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.samplers.NSGAIISampler(seed=0, population_size=2) if sampler == "nsga2" else optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=s)
    early, c_early = _tell(study, [0.12, 0.20], 0.52, conf=1)  # before any reference trial
    assert c_early == UNVERIFIED
    _, c_ref = _tell(study, [0.0, 0.30], 0.55, conf=0)  # the reference: bound 0.50
    assert c_ref == pytest.approx(-0.05)
    honest, c_honest = _tell(study, [0.10, 0.25], 0.51)
    one, c_one = _tell(study, [0.0, 0.001], 0.0004)  # worst 0, std ~0: would dominate the reference
    assert c_honest == pytest.approx(-0.01) and c_one == pytest.approx(0.5 - 0.0004)
    frozen = {t.number: t for t in study.trials}
    assert frozen[one].constraints == {GUARD_CONSTRAINT: pytest.approx(0.4996)}  # where the samplers read it
    best = {t.number for t in study.best_trials}
    assert one not in best and early not in best and honest in best
    # without the constraint the one-class trial would be on Optuna's front
    plain = optuna.create_study(directions=["maximize", "minimize"])
    for t in study.trials:
        plain.add_trial(optuna.trial.create_trial(values=t.values, state=t.state))
    assert one in {t.number for t in plain.best_trials}
    for _ in range(4):  # the sampler runs on a constrained history (NSGA-II's second generation included)
        t = study.ask()
        t.set_constraint(GUARD_CONSTRAINT, -0.01)
        study.tell(t, [0.05, 0.2])


def test_constraint_values():
    assert constraint_value(float("nan"), [0.5], 0.05) == UNVERIFIED
    assert constraint_value(0.4, [], 0.05) == UNVERIFIED
    assert constraint_value(0.3, [0.5, 0.7], 0.1) == pytest.approx(0.2)


def test_the_study_searcher_records_the_constraint_before_each_tell(tmp_path):
    """study._searcher wires the guard: Ray's OptunaSearch API driven by hand (no Ray cluster)."""
    from tce_ray.core.objectives import resolve_objectives
    from tce_ray.study.runner import _searcher

    cfg = parse_config({
        "name": "g", "storage": str(tmp_path), "data": {"name": "synthetic"}, "loss": {"name": "mcce"},
        "search": {"sampler": "nsga2", "configurations": [{"name": "mcce"}, {"name": "focal"}], "num_samples": 1},
        "front_guard": {"max_drop": 0.05},
    })
    searcher = _searcher(cfg, resolve_objectives(cfg.run.objectives))
    for tid in ("ref", "one", "sampled"):
        assert searcher.suggest(tid) is not None
    searcher.on_trial_complete("ref", {"worst_iou": 0.0, "iou_std": 0.3, "miou": 0.55})
    searcher.on_trial_complete("one", {"worst_iou": 0.0, "iou_std": 0.001, "miou": 0.0004})
    searcher.on_trial_complete("sampled", {"worst_iou": 0.01, "iou_std": 0.35, "miou": 0.52})
    study = searcher._ot_study
    by_conf = {t.user_attrs.get(CONFIGURATION_ATTR, -1): t for t in study.trials}
    assert by_conf[1].constraints[GUARD_CONSTRAINT] == pytest.approx(0.4996)
    best = {t.number for t in study.best_trials}
    assert by_conf[1].number not in best and by_conf[0].number in best and by_conf[-1].number in best


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "studies").glob("*.yaml")))
def test_no_shipped_study_can_put_a_one_class_model_on_its_front(path):
    """Every shipped study has the guard, and with its own objectives a one-class model beside
    honest runs of its configurations is kept off the front (the data section is swapped for
    the synthetic set: only the study's search, objectives and guard matter here)."""
    import yaml

    from tce_ray.core.objectives import resolve_objectives

    data = yaml.safe_load(path.read_text())
    data["data"] = {"name": "synthetic"}
    cfg = parse_config(data)
    guard = cfg.guard()
    assert guard is not None and guard.metric == "miou" and guard.max_drop <= 0.05
    assert cfg.search.configurations[guard.reference].settings()["name"] == "mcce"
    objs = {o.key: o.mode for o in resolve_objectives(cfg.run.objectives)}
    rng = np.random.default_rng(1)
    recs = []
    for i, c in enumerate(cfg.search.configurations):
        for seed in cfg.search.seeds or [0]:
            iou = honest_iou(rng, 0.55)
            m = {"step": 8, "loss": 0.5, "miou": float(np.mean(iou)), **{k: get_objective(k)(iou) for k in objs}}
            m.update({f"iou/c{j}": float(v) for j, v in enumerate(iou)})
            study = {"configuration": i, "number": len(recs), "seed": seed}
            recs.append(TrialRecord(f"t{len(recs)}", {"loss": {"name": c.settings()["name"]}, "study": study}, m))
    one = one_class_iou()
    m = {"step": 8, "loss": 9.0, "miou": float(np.mean(one)), **{k: get_objective(k)(one) for k in objs}}
    m.update({f"iou/c{j}": float(v) for j, v in enumerate(one)})
    recs.append(TrialRecord("one", {"loss": {"name": "mcce"}, "study": {"configuration": -1, "number": 99}}, m))
    trials, _ = collect_trials(recs, objs, total_steps=8, guard=guard)
    assert "one" not in set(pareto_front(trials, objs)["trial_id"])
    unguarded, _ = collect_trials(recs, objs, total_steps=8)
    assert "one" in set(pareto_front(unguarded, objs)["trial_id"])  # its std ~0: nothing dominates it
