"""Results tables, Pareto ranks and the report, on the paper's Cityscapes IoUs (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tce_ray.results.report import build_report, fmt, main, reference_trial
from tce_ray.results.tables import (
    StudyTables,
    TrialRecord,
    collect_trials,
    group_key,
    group_table,
    mean_std,
    reference_group,
    non_dominated_ranks,
    pareto_front,
    read_tables,
    write_tables,
)

CLASSES = [
    "wall", "train", "rider", "fence", "terrain", "truck", "motorcycle", "pole", "bus", "traffic light",
    "bicycle", "traffic sign", "person", "sidewalk", "vegetation", "building", "sky", "car", "road",
]
PAPER = {
    "mcce": "48.46 53.66 61.12 62.23 62.98 66.21 67.72 69.19 71.53 74.33 79.23 81.22 83.19 84.95 92.52 93.04 95.00 95.45 98.06",
    "focal": "49.11 79.55 67.56 60.75 62.31 73.16 67.71 64.53 85.02 68.92 77.71 77.62 81.23 81.56 91.54 91.89 93.71 94.67 97.14",
    "tce01": "49.36 76.75 66.64 60.38 65.69 72.03 69.09 69.34 75.61 73.64 79.89 81.77 84.00 86.24 92.43 93.16 95.34 95.47 98.27",
    "tce1": "53.47 79.32 65.67 59.25 63.74 64.32 69.45 69.54 66.05 74.51 79.92 81.04 83.96 86.22 92.44 92.92 95.11 94.53 98.28",
}
OBJECTIVES = {"worst_iou": "max", "iou_std": "min"}


def _iou(key: str) -> np.ndarray:
    return np.array([float(x) for x in PAPER[key].split()]) / 100.0


def _record(tid: str, loss: dict, iou: np.ndarray | None, conf: int, *, step: int = 4, error=None,
            number: int | None = None) -> TrialRecord:
    metrics: dict = {}
    history = None
    if iou is not None:
        u = iou[~np.isnan(iou)]
        # shuffle the reported class order relative to the paper's (reports use the data set's order)
        metrics = {"step": step, "loss": 0.5, "miou": float(u.mean()), "worst_iou": float(u.min()),
                   "iou_std": float(np.std(u, ddof=1))}
        metrics.update({f"iou/{c}": float(v) for c, v in zip(CLASSES, iou)})
        rows = []
        for s in (2, step):
            row = {"step": s, "loss": 1.0 / s, "miou": float(u.mean()), "training_iteration": s // 2,
                   "config/loss/name": loss["name"]}
            if loss["name"] == "tce_stochastic":
                w = np.linspace(1, 2, len(CLASSES)) * s
                row.update({f"weights/{c}": float(x) for c, x in zip(CLASSES, w / w.sum())})
            rows.append(row)
        history = pd.DataFrame(rows)
    number = conf if number is None else number
    return TrialRecord(tid, {"loss": loss, "study": {"configuration": conf, "number": number}}, metrics, history,
                       error, f"/x/trial_{tid}")


def _paper_records() -> list[TrialRecord]:
    return [
        _record("a_00003", {"name": "tce_stochastic", "t": 1.0, "gamma": 0.1}, _iou("tce1"), 3),
        _record("a_00000", {"name": "mcce"}, _iou("mcce"), 0),
        _record("a_00001", {"name": "focal", "focal_gamma": 2.0}, _iou("focal"), 1),
        _record("a_00002", {"name": "tce_stochastic", "t": 0.1, "gamma": 0.1}, _iou("tce01"), 2),
        # sampled trials: ordered by their Optuna number (creation order), not their id
        _record("a_00005", {"name": "tce_image", "t": 0.5}, _iou("tce1"), -1, step=2, number=5),
        _record("a_00004", {"name": "tce_image", "t": 3.0}, None, -1, number=4,
                error=RuntimeError("Training failed\nTraceback ...\nValueError: loss is nan at step 3")),
    ]


def test_non_dominated_ranks_hand_cases():
    vals = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [2.0, 1.0], [np.nan, 0.0], [2.0, 0.5]])
    # both maximised: (2,1) dominates (1,1), (2,0.5); (0.5,2) not dominated; the duplicate
    # (2,0.5) rows do not dominate each other
    r = non_dominated_ranks(vals, ["max", "max"])
    assert r.tolist() == [1, 1, 0, 0, -1, 1]
    # first maximised, second minimised
    r = non_dominated_ranks(vals, ["max", "min"])
    # front (2, .5) x2; then (2, 1); then (1, 1) which dominates (.5, 2)
    assert r.tolist() == [2, 0, 3, 1, -1, 0]
    with pytest.raises(ValueError, match="modes"):
        non_dominated_ranks(vals, ["max"])
    with pytest.raises(ValueError, match="'max' or 'min'"):
        non_dominated_ranks(vals, ["max", "down"])


def test_collect_trials_status_order_and_pareto():
    trials, history = collect_trials(_paper_records(), OBJECTIVES, total_steps=4)
    assert trials["configuration"].tolist() == [0, 1, 2, 3, -1, -1]
    assert trials["trial_id"].tolist()[4:] == ["a_00004", "a_00005"]
    assert trials["status"].tolist() == ["completed"] * 4 + ["failed", "interrupted"]
    failed = trials[trials["status"] == "failed"].iloc[0]
    assert failed["error"] == "ValueError: loss is nan at step 3"
    assert "Training failed" in failed["error_detail"]
    # worst up, std down: TCE t=0.1 dominates focal and MCCE; TCE t=1 has the best worst class
    ranks = dict(zip(trials["trial_id"], trials["pareto_rank"]))
    # mcce (2), focal (1), tce t=0.1 (0), tce t=1 (0); failed and unfinished trials are not ranked
    assert ranks == {"a_00000": 2, "a_00001": 1, "a_00002": 0, "a_00003": 0, "a_00004": -1, "a_00005": -1}
    front = pareto_front(trials, OBJECTIVES)
    assert front["config/loss/t"].tolist() == [1.0, 0.1]  # best worst_iou first
    assert trials.loc[2, "label"] == "tce_stochastic t=0.1 γ=0.1 [#2]"
    assert set(history["trial_id"]) == {"a_00000", "a_00001", "a_00002", "a_00003", "a_00005"}
    assert "train_loss" in history and "weights/road" in history


def test_nonfinite_objective_marks_failed():
    rec = _record("b_00000", {"name": "mcce"}, _iou("mcce"), 0)
    rec.metrics["iou_std"] = float("nan")
    trials, _ = collect_trials([rec], OBJECTIVES, total_steps=4)
    assert trials.loc[0, "status"] == "failed"
    assert "iou_std" in trials.loc[0, "error"]


def test_fmt_rounds_half_up():
    assert fmt(64.595) == "64.60"
    assert fmt(0.125, 2) == "0.13"
    assert fmt(float("nan")) == "–"


def _write_paper_study(tmp_path: Path) -> Path:
    trials, history = collect_trials(_paper_records(), OBJECTIVES, total_steps=4)
    meta = {"name": "paper", "objectives": [{"name": k, "mode": v} for k, v in OBJECTIVES.items()],
            "class_names": CLASSES, "sampler": "nsga2"}
    d = tmp_path / "paper"
    write_tables(d, StudyTables(trials, history, pareto_front(trials, OBJECTIVES), meta))
    return d


def test_report_reproduces_table3(tmp_path):
    d = _write_paper_study(tmp_path)
    tables = read_tables(d)
    assert reference_trial(tables.trials)["trial_id"] == "a_00000"
    build_report(d)
    text = (d / "report.md").read_text()
    # the paper's Table 3 rows (MCCE reference): mIoU; sorted bottom, top; (p25, mean); (p75, mean); worst; std
    for row in [
        "| mcce [#0] | 75.79 | 57.69 | 94.81 | 64.60 (57.69) | 88.74 (94.81) | 48.46 (wall) | 14.96 |",
        "| focal fγ=2 [#1] | 77.14 | 63.86 | 93.79 | 67.64 (60.85) | 88.28 (93.79) | 49.11 (wall) | 13.35 |",
        "| tce_stochastic t=0.1 γ=0.1 [#2] | 78.16 | 63.76 | 94.93 | 69.22 (62.23) | 89.34 (94.93) | 49.36 (wall) | 13.34 |",
        "| tce_stochastic t=1 γ=0.1 [#3] | 77.35 | 64.29 | 94.66 | 65.86 (61.29) | 89.33 (94.66) | 53.47 (wall) | 13.57 |",
    ]:
        assert row in text, row
    # per-class table: columns sorted by MCCE's IoU (the paper's order is already ascending)
    header = next(ln for ln in text.splitlines() if ln.startswith("| trial | wall"))
    assert header.split(" | ")[1:4] == ["wall", "train", "rider"]
    assert "| mcce [#0] | 48.46 | 53.66 |" in text
    assert "ValueError: loss is nan at step 3" in text  # failed-trials section
    for p in ("pareto.png", "per_class_iou.png", "weights.png"):
        assert (d / "plots" / p).stat().st_size > 1000


def test_report_without_mcce_drops_sorted_criteria(tmp_path):
    recs = [r for r in _paper_records() if r.config["loss"]["name"] != "mcce"]
    trials, history = collect_trials(recs, OBJECTIVES, total_steps=4)
    d = tmp_path / "nomcce"
    meta = {"name": "x", "objectives": [{"name": k, "mode": v} for k, v in OBJECTIVES.items()]}
    write_tables(d, StudyTables(trials, history, pareto_front(trials, OBJECTIVES), meta))
    assert main([str(d)]) == 0
    text = (d / "report.md").read_text()
    assert "sorted bottom 25%" not in text
    assert "No completed MCCE trial" in text


def test_report_cli_on_missing_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tce_ray.results.report", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "trials.parquet" in proc.stderr and "Traceback" not in proc.stderr


def test_tables_and_report_through_a_uri(tmp_path):
    trials, history = collect_trials(_paper_records(), OBJECTIVES, total_steps=4)
    meta = {"name": "paper", "objectives": [{"name": k, "mode": v} for k, v in OBJECTIVES.items()]}
    uri = f"file://{tmp_path}/remote/paper"
    write_tables(uri, StudyTables(trials, history, pareto_front(trials, OBJECTIVES), meta))
    back = read_tables(uri)
    assert back.trials["trial_id"].tolist() == trials["trial_id"].tolist()
    assert build_report(uri) == uri + "/report.md"
    assert "Fairness criteria" in (tmp_path / "remote" / "paper" / "report.md").read_text()
    assert (tmp_path / "remote" / "paper" / "plots" / "pareto.png").is_file()
    assert len(pd.read_parquet(tmp_path / "remote" / "paper" / "groups.parquet")) == 6


# --------------------------------------------------------------------------- seeds: groups

SEED_CLASSES = ["a", "b", "c", "d"]
# per seed 0, 1, 2 (fractions). MCCE's mean is a=.50 b=.60 c=.80 d=.20, so the mean reference
# orders d < a < b < c; seed 0 alone would order a (.30) < d (.35): a test of "the MEAN is the reference"
MCCE_SEEDS = [[0.30, 0.60, 0.80, 0.35], [0.60, 0.70, 0.90, 0.10], [0.60, 0.50, 0.70, 0.15]]
TCE_SEEDS = [[0.50, 0.55, 0.75, 0.40], [0.45, 0.60, 0.70, 0.30], [0.55, 0.65, 0.80, 0.38]]
TCE_LOSS = {"name": "tce_stochastic", "t": 1.0, "gamma": 0.1, "tilt_signal": "batch"}


def _seed_record(tid: str, loss: dict, iou, conf: int, seed: int, number: int, *, step: int = 4,
                 error=None) -> TrialRecord:
    metrics: dict = {}
    if iou is not None:
        u = np.asarray(iou, dtype=np.float64)
        metrics = {"step": step, "loss": 0.5, "miou": float(u.mean()), "worst_iou": float(u.min()),
                   "iou_std": float(np.std(u, ddof=1))}
        metrics.update({f"iou/{c}": float(v) for c, v in zip(SEED_CLASSES, u)})
    cfg = {"loss": loss, "study": {"configuration": conf, "number": number, "seed": seed}}
    return TrialRecord(tid, cfg, metrics, None, error, "")


def _seed_records() -> list[TrialRecord]:
    """2 configurations x seeds 0..2 (enqueued seed by seed), a 4th TCE seed that failed,
    a 5th still running (interrupted), and one sampled trial."""
    recs, n = [], 0
    for s in range(3):
        recs.append(_seed_record(f"m{s}", {"name": "mcce"}, MCCE_SEEDS[s], 0, s, n))
        recs.append(_seed_record(f"t{s}", dict(TCE_LOSS), TCE_SEEDS[s], 1, s, n + 1))
        n += 2
    recs.append(_seed_record("t3", dict(TCE_LOSS), None, 1, 3, n, error=RuntimeError("ValueError: diverged")))
    recs.append(_seed_record("t4", dict(TCE_LOSS), [0.9, 0.9, 0.9, 0.9], 1, 4, n + 1, step=2))  # partial
    recs.append(_seed_record("x", {"name": "tce_class", "t": 0.123}, [0.40, 0.40, 0.50, 0.45], -1, 0, n + 2))
    return recs


def _table3_by_hand(u: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The criteria of one IoU vector (percent, no absent class), written out independently."""
    k = len(u)
    m = max(1, int(np.floor(k / 4 + 0.5)))
    order = np.argsort(ref, kind="stable")
    p25, p75 = np.percentile(u, 25), np.percentile(u, 75)
    return {"miou": u.mean(), "sorted_bottom25": u[order[:m]].mean(), "sorted_top25": u[order[-m:]].mean(),
            "p25": p25, "p25_mean": u[u <= p25].mean(), "p75": p75, "p75_mean": u[u >= p75].mean(),
            "worst": u.min(), "std": u.std(ddof=1)}


def _write_seed_study(tmp_path: Path) -> Path:
    trials, history = collect_trials(_seed_records(), OBJECTIVES, total_steps=4)
    meta = {"name": "seeds", "objectives": [{"name": k, "mode": v} for k, v in OBJECTIVES.items()]}
    d = tmp_path / "seeds"
    write_tables(d, StudyTables(trials, history, pareto_front(trials, OBJECTIVES), meta))
    return d


def test_groups_ignore_the_seed():
    trials, _ = collect_trials(_seed_records(), OBJECTIVES, total_steps=4)
    assert trials["seed"].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0]
    assert trials["trial_id"].tolist() == ["m0", "m1", "m2", "t0", "t1", "t2", "t3", "t4", "x"]
    assert trials.loc[3, "label"] == "tce_stochastic t=1 γ=0.1 [#1] seed=0"  # several seeds: named
    assert trials["group"].nunique() == 3
    assert set(trials.loc[trials["configuration"] == 1, "group"]) == {"tce_stochastic gamma=0.1 t=1.0 tilt_signal=batch"}
    # 1 and 1.0 (an int column after a Parquet round trip) are one group; another t is another
    assert group_key({"config/loss/name": "tce_image", "config/loss/t": 1}) == \
        group_key({"config/loss/name": "tce_image", "config/loss/t": 1.0, "seed": 3})
    assert group_key({"config/loss/name": "tce_image", "config/loss/t": 1.0}) != \
        group_key({"config/loss/name": "tce_image", "config/loss/t": 1.0000001})
    # one seed only: labels as before (no seed)
    one, _ = collect_trials(_seed_records()[:2], OBJECTIVES, total_steps=4)
    assert one["label"].tolist() == ["mcce [#0]", "tce_stochastic t=1 γ=0.1 [#1]"]
    assert mean_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, np.std([1, 2, 6], ddof=1), 3))
    m, s, n = mean_std([np.nan, 2.0])
    assert (m, n) == (2.0, 1) and np.isnan(s)


def test_group_table_mean_std_over_seeds(tmp_path):
    trials, _ = collect_trials(_seed_records(), OBJECTIVES, total_steps=4)
    assert reference_group(trials) == "mcce"
    g = group_table(trials, OBJECTIVES)
    assert g["label"].tolist() == ["mcce [#0]", "tce_stochastic t=1 γ=0.1 [#1]", "tce_class t=0.123"]
    assert g["n"].tolist() == [3, 3, 1]  # the failed and the unfinished TCE seeds do not count
    assert g["n_trials"].tolist() == [3, 5, 1]
    assert g["seeds"].tolist() == ["[0, 1, 2]", "[0, 1, 2]", "[0]"]
    assert g["reference"].tolist() == [True, False, False]
    assert g["configuration"].tolist() == [0, 1, -1]
    mc, tc = np.array(MCCE_SEEDS), np.array(TCE_SEEDS)
    for row, u in ((g.iloc[0], mc), (g.iloc[1], tc)):
        for j, c in enumerate(SEED_CLASSES):
            assert row[f"iou/{c}/mean"] == pytest.approx(u[:, j].mean())
            assert row[f"iou/{c}/std"] == pytest.approx(u[:, j].std(ddof=1))
        worst = u.min(axis=1)
        assert row["worst_iou/mean"] == pytest.approx(worst.mean())
        assert row["worst_iou/std"] == pytest.approx(worst.std(ddof=1))
        ref = mc.mean(axis=0) * 100
        crits = [_table3_by_hand(x * 100, ref) for x in u]
        for k in crits[0]:
            vals = np.array([c[k] for c in crits])
            assert row[f"table3/{k}/mean"] == pytest.approx(vals.mean()), k
            assert row[f"table3/{k}/std"] == pytest.approx(vals.std(ddof=1)), k
    # hand-computed: MCCE's sorted bottom class is d (mean 20), not a (seed 0's lowest)
    assert g.iloc[0]["table3/sorted_bottom25/mean"] == pytest.approx(20.0)   # (35 + 10 + 15) / 3
    assert g.iloc[0]["table3/sorted_bottom25/std"] == pytest.approx(np.sqrt(175))  # devs 15, -10, -5
    assert g.iloc[1]["table3/sorted_bottom25/mean"] == pytest.approx(36.0)   # (40 + 30 + 38) / 3
    assert np.isnan(g.iloc[2]["worst_iou/std"]) and g.iloc[2]["worst_iou/mean"] == pytest.approx(0.40)
    # groups' Pareto ranks from the mean objectives: x (.40, .048) beats TCE (.36, .166) beats MCCE
    assert g["pareto_rank"].tolist() == [2, 1, 0]


def test_report_groups_section(tmp_path):
    d = _write_seed_study(tmp_path)
    assert main([str(d)]) == 0
    text = (d / "report.md").read_text()
    assert "## Configurations over seeds (mean ± std)" in text
    # per-class: columns by the MCCE group's MEAN IoU (d, a, b, c), mean ± std in percent
    header = next(ln for ln in text.splitlines() if ln.startswith("| group | d "))
    assert header == "| group | d | a | b | c |"
    assert "| mcce [#0] | 20.00 ± 13.23 | 50.00 ± 17.32 | 60.00 ± 10.00 | 80.00 ± 10.00 |" in text
    assert "| tce_stochastic t=1 γ=0.1 [#1] | 36.00 ± 5.29 | 50.00 ± 5.00 | 60.00 ± 5.00 | 75.00 ± 5.00 |" in text
    assert "| tce_class t=0.123 | 45.00 ± – | 40.00 ± – | 40.00 ± – | 50.00 ± – |" in text
    # Table 3 over seeds, n = finished seeds: mIoU 51.25, 57.5, 48.75 -> 52.50 ± 4.51;
    # sorted bottom d: 35, 10, 15; sorted top c: 80, 90, 70; worst 30, 10, 15 -> 18.33 ± 10.41
    section = text[text.index("## Fairness criteria (the paper's Table 3), mean ± std over seeds"):]
    t3 = next(ln for ln in section.splitlines() if ln.startswith("| mcce [#0] | 3 | "))
    cells = [c.strip() for c in t3.strip("|").split("|")]
    assert cells[:5] == ["mcce [#0]", "3", "52.50 ± 4.51", "20.00 ± 13.23", "80.00 ± 10.00"]
    assert cells[9] == "18.33 ± 10.41"
    assert "| tce_stochastic t=1 γ=0.1 [#1] | 3 | 55.25 ± 4.13 | 36.00 ± 5.29 | 75.00 ± 5.00 |" in text
    assert "MCCE group's MEAN per-class IoU" in text
    # the group objectives table, 4 decimals: worst_iou .30 .10 .15 -> 0.1833 ± 0.1041
    assert "| mcce [#0] | 3 | 0, 1, 2 | 18.33 ± 10.41 |" in text
    # the per-trial tables stay, after the groups, with the same (mean) reference
    assert text.index("## Configurations over seeds") < text.index("## Trials") < text.index("## Per-class IoU (%)\n")
    assert "| mcce [#0] seed=0 | 51.25 | 35.00 | 80.00 |" in text
    assert "ValueError: diverged" in text
    # groups.parquet: one row per group; the plots
    g = pd.read_parquet(d / "groups.parquet")
    assert g["label"].tolist()[:2] == ["mcce [#0]", "tce_stochastic t=1 γ=0.1 [#1]"] and len(g) == 3
    assert g["n"].tolist() == [3, 3, 1]
    assert g.loc[0, "table3/miou/mean"] == pytest.approx(52.5)
    for p in ("pareto_groups.png", "per_class_iou_groups.png", "pareto.png"):
        assert (d / "plots" / p).stat().st_size > 1000
    # rebuilt from the Parquet files alone: the same report
    (d / "report.md").unlink()
    (d / "groups.parquet").unlink()
    build_report(d)
    assert (d / "report.md").read_text() == text and (d / "groups.parquet").is_file()


def test_single_seed_study_has_no_group_section(tmp_path):
    d = _write_paper_study(tmp_path)
    build_report(d)
    text = (d / "report.md").read_text()
    assert "mean ± std" not in text and "Configurations over seeds" not in text
    assert not (d / "plots" / "pareto_groups.png").exists()
    g = pd.read_parquet(d / "groups.parquet")
    # the failed and the unfinished sampled trials: groups with n = 0
    assert g["n"].tolist() == [1, 1, 1, 1, 0, 0] and g["n_trials"].tolist() == [1] * 6


GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("study", ["paper", "seeds"])
def test_report_matches_its_golden_file(tmp_path, study):
    """The whole report.md, byte for byte, as the code before the report was split into
    sections wrote it. A deliberate change of the report: rewrite the golden file with
    the new output (and say why in the commit)."""
    d = _write_paper_study(tmp_path) if study == "paper" else _write_seed_study(tmp_path)
    build_report(d)
    assert (d / "report.md").read_text(encoding="utf-8") == (GOLDEN / f"report_{study}.md").read_text(encoding="utf-8")


def test_reference_comparisons_match_scipy_and_hand_values():
    """Each configuration against the MCCE group over seeds: Welch p as scipy computes it,
    the criteria per seed by hand (K = 4: the sorted bottom 25 % is the one class d)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    from tce_ray.results.tables import reference_comparisons

    trials, _ = collect_trials(_seed_records(), OBJECTIVES, total_steps=4)
    comp = reference_comparisons(trials, n_resamples=2000)
    tce = comp[comp["label"] == "tce_stochastic t=1 γ=0.1 [#1]"].set_index("criterion")
    mc, tc = np.array(MCCE_SEEDS) * 100, np.array(TCE_SEEDS) * 100
    hand = {
        "miou": (tc.mean(axis=1), mc.mean(axis=1)),
        "worst": (tc.min(axis=1), mc.min(axis=1)),
        "sorted_bottom25": (tc[:, 3], mc[:, 3]),  # d: the reference's lowest mean IoU
        "std": (tc.std(axis=1, ddof=1), mc.std(axis=1, ddof=1)),
    }
    for k, (a, b) in hand.items():
        r = tce.loc[k]
        assert (r["n"], r["n_ref"]) == (3, 3)
        assert r["diff"] == pytest.approx(a.mean() - b.mean())
        assert r["p_welch"] == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-6)
        assert r["ci_low"] <= r["diff"] <= r["ci_high"]
    # one seed against three: a difference, no p, no interval
    one = comp[comp["label"] == "tce_class t=0.123"].set_index("criterion")
    assert one.loc["miou", "n"] == 1 and np.isnan(one.loc["miou", "p_welch"]) and np.isnan(one.loc["miou", "ci_low"])
    # no MCCE group: no comparisons
    no_ref = trials[trials["config/loss/name"] != "mcce"]
    assert reference_comparisons(no_ref).empty


def test_report_significance_section_and_partial_trials_with_their_step(tmp_path):
    from tce_ray.results.report import partial_status

    d = _write_seed_study(tmp_path)
    build_report(d)
    text = (d / "report.md").read_text()
    sec = text[text.index("## Against the MCCE reference, over seeds"):text.index("## Trials")]
    row = next(ln for ln in sec.splitlines() if ln.startswith("| tce_stochastic t=1 γ=0.1 [#1] | 3 | 3 |"))
    assert "+2.75 (p=" in row  # Δ mIoU: 55.25 - 52.50
    assert "| tce_class t=0.123 | 1 | 3 | -8.75 (n/a) |" in sec
    assert "| interrupted at step 2 |" in text
    assert "seed=4 (interrupted at step 2) |" in text  # per-class and Table 3 rows
    assert partial_status({"status": "stopped", "step": 400.0}, 1200) == "stopped at step 400/1200"
    assert partial_status({"status": "completed", "step": 1200}, 1200) == "completed"
    assert partial_status({"status": "interrupted", "step": float("nan")}) == "interrupted"


def test_report_marks_trials_the_front_guard_keeps_off(tmp_path):
    """A one-class model (worst 0, std ~0) is in the trials table with the reason and not
    on the front; the summary states the bound."""
    from tce_ray.core.front_guard import FrontGuard

    guard = FrontGuard(reference=0, max_drop=0.05)
    one = np.zeros(len(SEED_CLASSES))
    one[0] = 0.004
    recs = _seed_records() + [_seed_record("one", {"name": "focal"}, one, 2, 0, 20)]
    trials, history = collect_trials(recs, OBJECTIVES, total_steps=4, guard=guard)
    meta = {"name": "g", "objectives": [{"name": k, "mode": v} for k, v in OBJECTIVES.items()],
            "front_guard": guard.to_meta(), "total_steps": 4}
    d = tmp_path / "g"
    write_tables(d, StudyTables(trials, history, pareto_front(trials, OBJECTIVES), meta))
    build_report(d)
    text = (d / "report.md").read_text()
    bound = np.mean(np.array(MCCE_SEEDS).mean(axis=1)) - 0.05
    assert f"(bound {100 * bound:.2f} %, from 3 completed reference trials)" in text
    row = next(ln for ln in text.splitlines() if "| one |" in ln)
    assert row.endswith(f"| – | violates front guard (mIoU 0.10 % < bound {100 * bound:.2f} %) |")
    front = text[text.index("## Pareto front"):]
    front = front[:front.index("\n## ", 3)]
    assert "| one |" not in front and "front guard lets through" in front
    assert "| interrupted at step 2/4 |" in text
    groups = pd.read_parquet(d / "groups.parquet").set_index("label")
    assert groups.loc["focal [#2]", "pareto_rank"] == -1
