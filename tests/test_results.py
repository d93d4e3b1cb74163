"""tce_ray.results.tables: Pareto ranks, trial rows and their status, groups, files; hand-computed
cases and bad input (the report built on them: tests/test_report.py)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tce_ray.results.tables import (
    StudyTables,
    TrialRecord,
    collect_trials,
    flatten_config,
    group_key,
    group_table,
    local_output_dir,
    mean_iou_percent,
    mean_std,
    non_dominated_ranks,
    pareto_front,
    rank_trials,
    read_tables,
    records_from_result_grid,
    study_fs,
    summarize_error,
    write_tables,
)

OBJ = {"worst_iou": "max", "iou_std": "min"}


def record(tid: str, loss: dict, *, iou=None, step: int = 4, conf: int = -1, number: int = 0, seed=None,
           error=None, metrics: dict | None = None, history: pd.DataFrame | None = None) -> TrialRecord:
    m = dict(metrics or {})
    if iou is not None:
        u = np.asarray(iou, dtype=np.float64)
        p = u[~np.isnan(u)]
        m.update(step=step, loss=0.5, miou=float(p.mean()), worst_iou=float(p.min()), iou_std=float(p.std(ddof=1)))
        m.update({f"iou/{c}": float(v) for c, v in zip("abc", u)})
    study = {"configuration": conf, "number": number}
    if seed is not None:
        study["seed"] = seed
    return TrialRecord(tid, {"loss": loss, "study": study}, m, history, error, f"/runs/trial_{tid}")


# ----------------------------------------------------------------------------- Pareto
def test_three_objectives_by_hand():
    # max, min, max: row 0 = (1, 1, 1) is dominated by row 1 = (2, 1, 1); rows 1, 2 and 3
    # trade off; row 4 is dominated by 0 only through all three columns
    vals = [[1, 1, 1], [2, 1, 1], [0, 0, 0], [1, 2, 3], [0.5, 1.5, 0.5]]
    assert non_dominated_ranks(vals, ["max", "min", "max"]).tolist() == [1, 0, 0, 0, 2]
    # all minimised, one row per column best
    assert non_dominated_ranks(np.eye(3), ["min"] * 3).tolist() == [0, 0, 0]


def test_ranks_of_empty_infinite_and_bad_input():
    assert non_dominated_ranks(np.zeros((0, 2)), ["max", "min"]).tolist() == []
    assert non_dominated_ranks([[np.inf, 1.0], [1.0, 1.0]], ["max", "max"]).tolist() == [-1, 0]
    with pytest.raises(ValueError, match="shape"):
        non_dominated_ranks([1.0, 2.0], ["max"])


def test_only_completed_trials_are_ranked_and_the_front_is_sorted_best_first():
    t = pd.DataFrame({
        "status": ["completed", "completed", "stopped", "completed"],
        "worst_iou": [0.2, 0.4, 0.9, 0.3],
        "iou_std": [0.1, 0.3, 0.0, 0.2],
    })
    ranked = rank_trials(t, OBJ)
    assert ranked["pareto_rank"].tolist() == [0, 0, -1, 0]  # the stopped trial would dominate all
    assert pareto_front(t, OBJ)["worst_iou"].tolist() == [0.4, 0.3, 0.2]  # max: descending
    assert pareto_front(t, {"iou_std": "min"})["iou_std"].tolist() == [0.1]
    assert (rank_trials(t, {"nope": "max"})["pareto_rank"] == -1).all()  # a missing objective: unranked
    assert "pareto_rank" not in t  # a copy


# ----------------------------------------------------------------------------- rows
def test_flatten_config():
    cfg = {"loss": {"name": "focal", "focal_alpha": [1, 2.5]}, "data": {"crop": (3, 4), "opt": {"k": None}}, "x": 1}
    assert flatten_config(cfg) == {
        "config/loss/name": "focal", "config/loss/focal_alpha": "[1, 2.5]", "config/data/crop": "[3, 4]",
        "config/data/opt/k": None, "config/x": 1,
    }  # fmt: skip
    assert flatten_config({"a": {"b": 1}}, prefix="") == {"a/b": 1}


def test_summarize_error():
    assert summarize_error(None) == ""
    text = "Training failed\nTraceback (most recent call last):\n  File x\nValueError: loss is nan at step 3\n"
    assert summarize_error(text) == "ValueError: loss is nan at step 3"
    assert summarize_error("ray.exceptions.RayTaskError(ValueError): boom\nKeyError: 'k'") == "KeyError: 'k'"
    assert summarize_error("something odd\nno error line") == "no error line"
    try:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError as e:
            raise RuntimeError("Training failed") from e
    except RuntimeError as err:
        assert summarize_error(err) == "ZeroDivisionError: division by zero"
    assert len(summarize_error("ValueError: " + "x" * 2000)) == 500
    assert summarize_error(RuntimeError("")) == "RuntimeError"


def test_status_rules():
    recs = [
        record("done", {"name": "mcce"}, iou=[0.2, 0.4, 0.6], conf=0),
        record("early", {"name": "mcce"}, iou=[0.2, 0.4, 0.6], step=2, number=1),
        record("never", {"name": "mcce"}, number=2),  # no report at all
        record("err", {"name": "mcce"}, iou=[0.2, 0.4, 0.6], number=3, error=RuntimeError("x\nValueError: bad")),
        # a non-finite objective is a failure at the end, but not in a trial stopped early
        record("nan_end", {"name": "mcce"}, number=4, metrics={"step": 4, "worst_iou": float("nan"), "iou_std": 0.1}),
        record("nan_mid", {"name": "mcce"}, number=5, metrics={"step": 2, "worst_iou": float("nan"), "iou_std": 0.1}),
    ]
    t, _ = collect_trials(recs, OBJ, total_steps=4, stopped_status="stopped")
    status = dict(zip(t["trial_id"], t["status"]))
    assert status == {"done": "completed", "early": "stopped", "never": "pending", "err": "failed",
                      "nan_end": "failed", "nan_mid": "stopped"}
    errors = dict(zip(t["trial_id"], t["error"]))
    assert errors["err"] == "ValueError: bad" and errors["nan_end"] == "objective(s) worst_iou missing or not finite at the last report"
    assert errors["done"] == "" and t.set_index("trial_id").loc["err", "error_detail"] == "x\nValueError: bad"
    assert t.set_index("trial_id").loc["done", "path"] == "/runs/trial_done"
    t, _ = collect_trials(recs[1:2], OBJ, total_steps=4)
    assert t["status"].tolist() == ["interrupted"]


def test_rows_order_seed_metrics_and_history():
    hist = pd.DataFrame({"step": [2, 4], "loss": [1.0, 0.5], "miou": [0.3, 0.4], "lr": [0.1, 0.0],
                         "weights/a": [0.5, 0.4], "worst_iou": [0.1, 0.2], "fairness/std": [1.0, 2.0]})
    recs = [
        record("s2", {"name": "tce_image", "t": 2.0}, iou=[0.3, 0.3, np.nan], number=7, seed=1),
        record("c1", {"name": "mcce"}, iou=[0.2, 0.4, 0.6], conf=1, number=9, seed=0, history=hist),
        record("s1", {"name": "tce_image", "t": 0.5}, iou=[0.3, 0.5, 0.6], number=3),  # no seed: the default
        record("c0", {"name": "mcce"}, iou=[0.25, 0.4, 0.6], conf=0, number=8, seed=1),
    ]
    t, h = collect_trials(recs, OBJ, total_steps=4, default_seed=5)
    # explicit configurations first (by index), then by creation order (Optuna number)
    assert t["trial_id"].tolist() == ["c0", "c1", "s1", "s2"]
    assert t["seed"].tolist() == [1, 0, 5, 1] and t["configuration"].tolist() == [0, 1, -1, -1]
    assert list(t.columns[:3]) == ["trial_id", "label", "group"]
    assert t["label"].tolist()[:2] == ["mcce [#0] seed=1", "mcce [#1] seed=0"]  # several seeds: named
    row = t.set_index("trial_id").loc["s2"]
    assert row["train_loss"] == 0.5 and row["worst_iou"] == 0.3 and math.isnan(row["iou/c"])
    assert row["config/loss/t"] == 2.0 and row["step"] == 4
    # the history keeps step/loss/miou/weights and the objectives, loss renamed, id first
    assert h.columns.tolist() == ["trial_id", "step", "train_loss", "miou", "weights/a", "worst_iou"]
    assert h["trial_id"].tolist() == ["c1", "c1"] and h["train_loss"].tolist() == [1.0, 0.5]


def test_no_records_give_empty_tables():
    t, h = collect_trials([], OBJ, total_steps=4)
    assert t.empty and h.empty and list(h.columns) == ["trial_id"]


def test_result_grid_adapter():
    class Result(SimpleNamespace):
        @property
        def metrics_dataframe(self):
            if self.hist is None:
                raise FileNotFoundError("no progress.csv")
            return self.hist

    grid = [
        Result(metrics={"trial_id": "abc", "step": 4}, config={"x": 1}, path="/r/trial_zzz", error=None,
               hist=pd.DataFrame({"step": [4]})),
        Result(metrics=None, config=None, path="/r/trial_def12/", error="boom", hist=None),
        Result(metrics={}, config={}, path="", error=None, hist=None),
    ]
    recs = records_from_result_grid(grid)
    assert [r.trial_id for r in recs] == ["abc", "def12", "trial_00002"]  # metrics, then path, then position
    assert recs[0].history["step"].tolist() == [4] and recs[1].history is None
    assert recs[1].metrics == {} and recs[1].config == {} and recs[1].error == "boom"


# ----------------------------------------------------------------------------- groups
def test_group_key_and_mean_std():
    assert group_key({"config/loss/name": "tce_class", "config/loss/t": 1, "config/loss/gamma": None}) == "tce_class t=1.0"
    assert group_key({"config/loss/tilt_signal": "class", "config/loss/t": 0.1}) == "? t=0.1 tilt_signal=class"
    assert mean_std([np.nan, np.inf]) == (pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True), 0)
    m, s, n = mean_std([1.0, np.inf, 3.0])
    assert (m, n) == (2.0, 2) and s == pytest.approx(math.sqrt(2.0))


def test_mean_iou_percent():
    t = pd.DataFrame({"status": ["completed", "completed", "failed"], "iou/a": [0.2, 0.4, 0.9],
                      "iou/b": [np.nan, 0.5, 0.9], "iou/c": [np.nan, np.nan, 0.9]})
    vec = mean_iou_percent(t, ["iou/a", "iou/b", "iou/c"])
    assert vec[:2] == pytest.approx([30.0, 50.0]) and math.isnan(vec[2])  # c: absent from every completed trial
    assert mean_iou_percent(t, ["iou/c"]) is None
    assert mean_iou_percent(t[t["status"] == "failed"], ["iou/a"]) is None  # no completed trial


def test_group_table_by_hand():
    recs = [
        record("m0", {"name": "mcce"}, iou=[0.2, 0.4, 0.6], conf=0, number=0, seed=0),
        record("m1", {"name": "mcce"}, iou=[0.4, 0.4, 0.8], conf=0, number=1, seed=1),
        # two sampled trials whose t print alike with 3 digits: the labels are told apart
        record("x", {"name": "tce_image", "t": 0.1234}, iou=[0.5, 0.5, 0.5 + 1e-9], number=2),
        record("y", {"name": "tce_image", "t": 0.12341}, iou=[0.1, 0.2, 0.9], number=3),
        record("f", {"name": "tce_image", "t": 3.0}, number=4, error="ValueError: diverged"),
    ]
    t, _ = collect_trials(recs, OBJ, total_steps=4)
    g = group_table(t, OBJ).set_index("group")
    assert list(g.index) == ["mcce", "tce_image t=0.1234", "tce_image t=0.12341", "tce_image t=3.0"]
    assert g["label"].tolist() == ["mcce [#0]", "tce_image t=0.123 (x)", "tce_image t=0.123 (y)", "tce_image t=3"]
    mc = g.loc["mcce"]
    assert (mc["n"], mc["n_trials"], mc["seeds"], mc["reference"]) == (2, 2, "[0, 1]", True)
    assert json.loads(mc["trial_ids"]) == ["m0", "m1"]
    # worst 0.2, 0.4; miou 0.4, 0.5333
    assert mc["worst_iou/mean"] == pytest.approx(0.3) and mc["worst_iou/std"] == pytest.approx(math.sqrt(0.02))
    assert mc["miou/mean"] == pytest.approx((0.4 + 1.6 / 3) / 2)
    assert mc["iou/c/mean"] == pytest.approx(0.7) and mc["iou/a/std"] == pytest.approx(math.sqrt(0.02))
    # Table 3 in percent, sorted against the MCCE mean (a=30 < b=40 < c=70): bottom class a
    assert mc["table3/sorted_bottom25/mean"] == pytest.approx(30.0)
    assert g.loc["tce_image t=0.12341", "table3/sorted_bottom25/mean"] == pytest.approx(10.0)
    assert g.loc["tce_image t=0.12341", "table3/worst/mean"] == pytest.approx(10.0)
    assert math.isnan(g.loc["tce_image t=0.1234", "worst_iou/std"])  # one trial: no std
    # ranks of the means (worst up, std down): x (0.5, ~0) dominates everyone; MCCE (0.3, 0.216)
    # dominates y (0.1, 0.436); the failed group is unranked
    assert mc["iou_std/mean"] == pytest.approx((0.2 + np.std([0.4, 0.4, 0.8], ddof=1)) / 2)
    assert g["pareto_rank"].tolist() == [1, 0, 2, -1]
    assert g.loc["tce_image t=3.0", "n"] == 0 and g.loc["tce_image t=3.0", "n_trials"] == 1


def test_group_table_without_a_reference_has_no_sorted_criteria():
    t, _ = collect_trials([record("y", {"name": "tce_image", "t": 1.0}, iou=[0.1, 0.2, 0.9])], OBJ, total_steps=4)
    g = group_table(t, OBJ)
    assert not g["reference"].any()
    assert math.isnan(g.loc[0, "table3/sorted_bottom25/mean"]) and g.loc[0, "table3/worst/mean"] == pytest.approx(10.0)
    assert group_table(t.iloc[0:0], OBJ).empty


# ----------------------------------------------------------------------------- files
def test_tables_roundtrip_and_missing_files(tmp_path):
    t, h = collect_trials([record("m0", {"name": "mcce"}, iou=[0.2, 0.4, 0.6], conf=0)], OBJ, total_steps=4)
    meta = {"name": "s", "objectives": [{"name": k, "mode": v} for k, v in OBJ.items()]}
    paths = write_tables(tmp_path / "s", StudyTables(t, h, pareto_front(t, OBJ), meta))
    assert set(paths) == {"trials", "history", "pareto", "meta"}
    back = read_tables(tmp_path / "s")
    pd.testing.assert_frame_equal(back.trials, t)
    assert back.meta == meta and back.objectives == OBJ
    (tmp_path / "s" / "study.json").unlink()
    assert read_tables(tmp_path / "s").meta == {} and read_tables(tmp_path / "s").objectives == {}
    (tmp_path / "s" / "history.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="history.parquet not found.*not a study result folder"):
        read_tables(tmp_path / "s")


def test_local_paths_and_uris(tmp_path):
    fs, path = study_fs("relative/dir")
    assert type(fs).__name__ == "LocalFileSystem" and path.endswith("/relative/dir") and path.startswith("/")
    fs, path = study_fs(f"file://{tmp_path}/x")
    assert path == f"{tmp_path}/x"
    local, publish = local_output_dir(tmp_path / "here")
    assert local == tmp_path / "here" and publish() is None
    (tmp_path / "remote").mkdir()  # a study folder: it holds the Parquet files already
    local, publish = local_output_dir(f"file://{tmp_path}/remote")
    assert local != tmp_path / "remote"
    (local / "report.md").write_text("hi")
    publish()
    assert (tmp_path / "remote" / "report.md").read_text() == "hi"
