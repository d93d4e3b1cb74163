"""What a resume after a hard kill relies on, without Ray: the saved-state check (cut files,
state pickled by an older tce-ray), the kept history, the final record, the failure summary."""

from __future__ import annotations

import json
import pickle
import sys
import types

import pandas as pd
import pytest

from tce_ray.results.tables import DamagedResultsError
from tce_ray.study.resume import (
    HISTORY_NAME,
    IncompatibleStateError,
    check_experiment,
    keep_histories,
    kept_history,
    merge_history,
    read_final,
    write_final,
)


def _session(d, stamp: str, *, cut: bool = False) -> None:
    state = json.dumps({"trial_data": [], "runner_data": {}, "stamp": stamp})
    (d / f"experiment_state-{stamp}.json").write_text(state[: len(state) // 2] if cut else state)
    (d / f"search_gen_state-{stamp}.json").write_bytes(pickle.dumps({"counter": 1}))
    (d / f"searcher-state-{stamp}.pkl").write_bytes(pickle.dumps({"_ot_trials": {}}))


def test_a_state_cut_by_a_kill_falls_back_to_the_previous_session(tmp_path):
    _session(tmp_path, "2026-01-01_00-00-00")
    _session(tmp_path, "2026-01-02_00-00-00", cut=True)
    with pytest.warns(UserWarning, match="experiment_state-2026-01-02_00-00-00.json: cut or not JSON"):
        warned = check_experiment(str(tmp_path))
    assert len(warned) == 1 and "the state saved before it is used" in warned[0]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "experiment_state-2026-01-01_00-00-00.json" in names  # what Tune restores now
    assert {"experiment_state-2026-01-02_00-00-00.json.damaged", "searcher-state-2026-01-02_00-00-00.pkl.damaged",
            "search_gen_state-2026-01-02_00-00-00.json.damaged"} <= set(names)
    assert check_experiment(str(tmp_path)) == []  # whole now


def test_a_cut_state_without_an_earlier_one_is_one_line(tmp_path):
    _session(tmp_path, "2026-01-02_00-00-00")
    (tmp_path / "searcher-state-2026-01-02_00-00-00.pkl").write_bytes(pickle.dumps({"x": list(range(100))})[:20])
    with pytest.raises(DamagedResultsError) as info:
        check_experiment(str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "searcher-state-2026-01-02_00-00-00.pkl" in msg and "cannot be resumed" in msg


def test_state_pickled_by_an_older_tce_ray_cannot_be_resumed_in_one_line(tmp_path):
    # a search space class that existed when the study was saved and is gone now (a refactor)
    mod = types.ModuleType("tce_ray_old_space")

    class SearchSpace:  # noqa: D401 - stand-in for the old class
        pass

    SearchSpace.__module__ = "tce_ray_old_space"
    SearchSpace.__qualname__ = "SearchSpace"
    mod.SearchSpace = SearchSpace
    sys.modules["tce_ray_old_space"] = mod
    try:
        blob = pickle.dumps({"_space": SearchSpace()})
    finally:
        del sys.modules["tce_ray_old_space"]
    _session(tmp_path, "2026-01-02_00-00-00")
    (tmp_path / "searcher-state-2026-01-02_00-00-00.pkl").write_bytes(blob)
    with pytest.raises(IncompatibleStateError) as info:
        check_experiment(str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "another version of tce-ray" in msg and "run it again as a new study" in msg
    assert "tce_ray_old_space" in msg
    assert (tmp_path / "searcher-state-2026-01-02_00-00-00.pkl").is_file()  # not renamed: it is not damaged


def test_kept_history_merges_attempts_once_per_step(tmp_path):
    trial = tmp_path / "trial_a"
    trial.mkdir()
    # the first attempt's reports (kept), then Tune's fresh result.json after a restore, cut by a kill
    (trial / HISTORY_NAME).write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"step": 2, "loss": 1.5}) + "\n")
    (trial / "result.json").write_text(json.dumps({"step": 2, "loss": 1.4, "config": {"x": 1}}) + "\n"
                                       + json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    with pytest.warns(UserWarning, match="line 3 is not complete JSON"):
        assert keep_histories(str(tmp_path)) == 1
    assert [json.loads(ln)["step"] for ln in (trial / "result.json").read_text().splitlines()] == [2, 3]  # cut line dropped
    h = kept_history(str(trial))
    assert h["step"].tolist() == [1, 2, 3] and h["loss"].tolist() == [2.0, 1.4, 1.0]  # the later attempt wins
    m = merge_history(pd.DataFrame({"step": [3, 4], "loss": [0.9, 0.8]}), None, h)
    assert m["step"].tolist() == [1, 2, 3, 4] and m.loc[m["step"] == 3, "loss"].item() == 1.0
    assert merge_history(None, pd.DataFrame()) is None


def test_final_record_round_trip_and_damaged_record(tmp_path):
    runs = str(tmp_path / "runs")
    assert read_final(runs, "abc") is None
    write_final(runs, "abc", {"step": 4, "worst_iou": 0.25, "iou/road": float("nan"), "nested": {"x": 1}})
    got = read_final(runs, "abc")
    assert got["step"] == 4 and got["worst_iou"] == 0.25 and "nested" not in got
    assert not [p for p in (tmp_path / "runs" / "abc").iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "runs" / "abc" / "tce_final.json").write_text('{"step": 4, "wor')
    assert read_final(runs, "abc") is None  # unreadable: the trial runs again from its checkpoint


def test_failed_trials_are_listed_at_the_end_with_their_traceback_file(capsys):
    from tce_ray.study.runner import StudyResult, _print_summary

    trials = pd.DataFrame({
        "trial_id": ["a", "b"], "label": ["mcce [#0]", "focal [#1]"], "status": ["completed", "failed"],
        "error": ["", "ValueError: loss is nan at step 3"], "error_file": ["", "/r/s/trial_b/error.txt"],
        "path": ["/r/s/trial_a", "/r/s/trial_b"],
    })
    _print_summary(StudyResult("s", "/r/s", trials, trials.iloc[:0], trials.iloc[:0], "/r/s/report.md"), 2)
    out = capsys.readouterr().out
    assert "done: 1 completed, 1 failed" in out
    assert "failed trials (1):\n  b [focal [#1]]: ValueError: loss is nan at step 3 (traceback: /r/s/trial_b/error.txt)" in out


def test_history_keeper_appends_every_report_and_survives_a_cut_line(tmp_path):
    import types

    import pyarrow.fs as pafs

    from tce_ray.study.trial_history import HistoryKeeper

    trial = types.SimpleNamespace(trial_id="a", storage=types.SimpleNamespace(
        trial_fs_path=str(tmp_path), storage_filesystem=pafs.LocalFileSystem()))
    keeper = HistoryKeeper()
    keeper.on_trial_result(0, [], trial, {"step": 1, "loss": 1.0, "config": {"loss": {"t": 1}}})
    with open(tmp_path / HISTORY_NAME, "a") as f:
        f.write('{"step": 2, "lo')  # the driver killed in the middle of a line
    keeper.on_trial_result(0, [], trial, {"step": 2, "loss": 0.5})  # the resumed driver
    with pytest.warns(UserWarning, match="line 2 is not complete JSON"):
        h = kept_history(str(tmp_path))
    assert h.to_dict("records") == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]  # config left out
    assert pickle.loads(pickle.dumps(keeper))._lines == {}  # what tuner.pkl holds: no cached reports


def _cfg(tmp_path, name="s"):
    from tce_ray.study.config import parse_config

    return parse_config({
        "name": name, "storage": str(tmp_path),
        "data": {"name": "synthetic", "options": {"num_images": 8, "image_size": [48, 64]}, "loader_workers": 0},
        "model": {"backbone": "tiny"}, "train": {"steps": 2, "batch_size": 2, "eval_every": 2, "num_workers": 1},
        "search": {"num_samples": 1},
    })


def test_resume_of_a_wrong_or_old_folder_is_one_line(tmp_path, monkeypatch):
    from tce_ray.study.runner import StudyError, _restore_tuner

    cfg = _cfg(tmp_path)
    with pytest.raises(StudyError, match="nothing to resume.*run without --resume"):
        _restore_tuner(cfg, None, False)  # no folder at all
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("not a study")
    from tce_ray.study.config import ConfigError

    # a ConfigError: the study CLI prints it as one line and exits 2 (bad input)
    with pytest.raises(ConfigError, match=r"s: not a study that can be resumed.*or run without --resume") as info:
        _restore_tuner(cfg, None, False)
    assert "\n" not in str(info.value)
    # a study saved by an older tce-ray: tuner.pkl refers to a class that is gone
    mod = types.ModuleType("tce_ray_gone")

    class Space:
        pass

    Space.__module__, Space.__qualname__ = "tce_ray_gone", "Space"
    mod.Space = Space
    sys.modules["tce_ray_gone"] = mod
    try:
        blob = pickle.dumps(Space())
    finally:
        del sys.modules["tce_ray_gone"]
    (tmp_path / "s" / "tuner.pkl").write_bytes(blob)
    _session(tmp_path / "s", "2026-01-02_00-00-00")
    with pytest.raises(StudyError, match="another version of tce-ray.*run it again as a new study") as info:
        _restore_tuner(cfg, None, False)
    assert "\n" not in str(info.value)


def test_history_keeper_writes_a_report_before_any_other_callback_sees_it(tmp_path, monkeypatch):
    """The "report" line is printed by a later callback: a kill right after it must not lose
    the report (the kill test once lost step 1 that way)."""
    from ray import tune

    from tce_ray.core.objectives import resolve_objectives
    from tce_ray.study.runner import _new_tuner
    from tce_ray.study.trial_history import HistoryKeeper

    monkeypatch.setattr("tce_ray.train.ray_env.max_concurrent", lambda *a: 1)  # no Ray cluster to ask
    cfg = _cfg(tmp_path)
    seen: list[bool] = []

    class Printer(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            seen.append((tmp_path / HISTORY_NAME).is_file())

    tuner = _new_tuner(cfg, lambda config: None, resolve_objectives(cfg.run.objectives), [Printer()], False)
    callbacks = tuner._local_tuner.get_run_config().callbacks
    assert isinstance(callbacks[0], HistoryKeeper)
    trial = types.SimpleNamespace(trial_id="a", storage=types.SimpleNamespace(
        trial_fs_path=str(tmp_path), storage_filesystem=__import__("pyarrow.fs").fs.LocalFileSystem()))
    for cb in callbacks:  # in Tune's order
        cb.on_trial_result(0, [], trial, {"step": 1})
    assert seen == [True]
