"""Issue 24 item 5: ``tracking:`` in the study file (MLflow / W&B through Tune's own logger
callbacks, checked before Ray starts) and TensorBoard runs named by the trial's label,
against the training step. No Ray cluster, no network: fakes stand in for the trackers."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from tce_ray.study.config import parse_config
from tce_ray.study.errors import ConfigError
from tce_ray.study.tracking import PIP, TrackingSpec, _with_step, check_tracking, tensorboard_callback, trial_run_name

BASE = {"name": "t", "data": {"name": "synthetic"}, "search": {"configurations": [{"name": "mcce"}]}}


def test_the_yaml_section_is_validated() -> None:
    cfg = parse_config({**BASE, "tracking": {"mlflow": {"tracking_uri": "file:/tmp/mlruns"}}})
    assert cfg.tracking.mlflow.tracking_uri == "file:/tmp/mlruns" and cfg.tracking.wandb is None
    with pytest.raises(ConfigError, match="tracking"):
        parse_config({**BASE, "tracking": {"mlfow": {}}})  # a typo
    with pytest.raises(ConfigError, match="tracking"):
        parse_config({**BASE, "tracking": {"mlflow": {"tracking_url": "x"}}})


def test_a_missing_package_is_one_line_with_the_pip_command() -> None:
    spec = TrackingSpec.model_validate({"mlflow": {}, "wandb": {}})
    with pytest.raises(ValueError) as exc:
        check_tracking(spec, installed=lambda name: name != "mlflow")
    msg = str(exc.value)
    assert "\n" not in msg and PIP["mlflow"] in msg and "tracking.mlflow" in msg
    assert check_tracking(spec, installed=lambda name: True) == ["mlflow", "wandb"]
    assert check_tracking(None) == [] and check_tracking(TrackingSpec()) == []


def test_required_false_skips_with_a_warning(capsys) -> None:
    spec = TrackingSpec.model_validate({"wandb": {"required": False}})
    assert check_tracking(spec, installed=lambda name: False) == []
    assert "tracking.wandb skipped" in capsys.readouterr().err


def test_run_study_stops_before_ray_on_a_missing_package(monkeypatch, tmp_path) -> None:
    import tce_ray.study.tracking as tracking
    from tce_ray.study import runner

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else object())
    monkeypatch.setattr(runner, "_run_locked", lambda *a, **k: pytest.fail("Ray must not start"))
    with pytest.raises(ConfigError, match="pip install"):
        runner.run_study({**BASE, "tracking": {"mlflow": {}}}, storage=tmp_path, check=False)


def test_run_names_are_the_report_labels() -> None:
    config = {"loss": {"name": "tce_stochastic", "t": 0.5, "gamma": 0.25}, "study": {"configuration": 1, "seed": 3}}
    assert trial_run_name(config, "abc", show_seed=True) == "tce_stochastic t=0.5 γ=0.25 [#1] seed=3 (abc)"
    assert trial_run_name({"loss": {"name": "mcce"}, "study": {"configuration": -1}}, "x1", show_seed=False) == "mcce (x1)"
    assert "/" not in trial_run_name({"loss": {"name": "a/b"}}, "x", show_seed=False)


def test_loggers_plot_against_the_step() -> None:
    assert _with_step({"step": 40, "training_iteration": 2})["timesteps_total"] == 40
    assert "timesteps_total" not in _with_step({"training_iteration": 2})


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboardX.proto import event_pb2

    tags: dict[str, list[tuple[int, float]]] = {}
    for f in folder.glob("events.out.tfevents.*"):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                tags.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return tags


def test_tensorboard_runs_named_by_label_against_the_step(tmp_path) -> None:
    pytest.importorskip("tensorboardX")
    cb = tensorboard_callback(str(tmp_path), show_seed=False)
    from ray.tune.logger import TBXLoggerCallback

    assert isinstance(cb, TBXLoggerCallback)  # so Tune adds no default TBX logger writing by iteration
    trial = SimpleNamespace(trial_id="t1", config={"loss": {"name": "mcce"}, "study": {"configuration": 0}},
                            local_experiment_path=str(tmp_path), init_local_path=lambda: None, evaluated_params={})
    trial = _Hashable(trial)
    for it, step in ((1, 20), (2, 40)):
        cb.log_trial_result(it, trial, {"step": step, "training_iteration": it, "worst_iou": 0.1 * it})
    cb.log_trial_end(trial)
    run = tmp_path / "tensorboard" / "mcce [#0] (t1)"
    tags = _events(run)
    assert [s for s, _ in tags["ray/tune/worst_iou"]] == [20, 40]
    assert [v for _, v in tags["ray/tune/worst_iou"]] == pytest.approx([0.1, 0.2])


class _Hashable:
    """A stand-in Trial (Tune keys its writers by the trial object)."""

    def __init__(self, ns: SimpleNamespace) -> None:
        self.__dict__.update(vars(ns))


def test_mlflow_callback_names_runs_and_logs_by_step(monkeypatch) -> None:
    import sys
    import types

    monkeypatch.setitem(sys.modules, "mlflow", sys.modules.get("mlflow") or types.ModuleType("mlflow"))  # a fake where absent
    from tce_ray.study.tracking import tracking_callbacks

    spec = TrackingSpec.model_validate({"mlflow": {"tracking_uri": "file:/tmp/x", "tags": {"who": "me"}}})
    (cb,) = tracking_callbacks(spec, "smoke", False, ["mlflow"])
    assert cb.experiment_name == "smoke" and cb.tracking_uri == "file:/tmp/x"
    calls: list[tuple] = []

    class FakeUtil:  # what MLflowLoggerCallback calls on mlflow
        def start_run(self, tags, run_name):
            calls.append(("start", run_name, tags["who"]))
            return SimpleNamespace(info=SimpleNamespace(run_id="r1"))

        def log_params(self, run_id, params_to_log):
            calls.append(("params", run_id))

        def log_metrics(self, run_id, metrics_to_log, step):
            calls.append(("metrics", run_id, step, metrics_to_log["worst_iou"]))

        def end_run(self, run_id, status):
            calls.append(("end", run_id, status))

    cb.mlflow_util, cb.tags, cb._trial_runs = FakeUtil(), {"who": "me"}, {}
    trial = _Hashable(SimpleNamespace(trial_id="t1", config={"loss": {"name": "mcce"}}, local_path="/tmp"))
    cb.log_trial_start(trial)
    cb.log_trial_result(1, trial, {"step": 40, "training_iteration": 1, "worst_iou": 0.3})
    cb.log_trial_end(trial)
    assert calls == [("start", "mcce (t1)", "me"), ("params", "r1"), ("metrics", "r1", 40, 0.3), ("end", "r1", "FINISHED")]


def test_the_yaml_turns_on_mlflow_logging_to_a_local_store(tmp_path) -> None:
    """The issue's check, where the mlflow package is installed (``pip install 'tce-ray[mlflow]'``):
    a study file's ``tracking.mlflow`` logs a trial's metrics against the step to a local store
    (SQLite: MLflow 3 refuses a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``)."""
    mlflow = pytest.importorskip("mlflow")
    import yaml

    from tce_ray.study.tracking import tracking_callbacks

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    text = yaml.safe_dump({**BASE, "tracking": {"mlflow": {"tracking_uri": uri}}})
    cfg = parse_config(yaml.safe_load(text))
    (cb,) = tracking_callbacks(cfg.tracking, "smoke", False, ["mlflow"])
    cb.setup()
    trial = _Hashable(SimpleNamespace(trial_id="t1", config={"loss": {"name": "mcce"}}, local_path=str(tmp_path)))
    cb.log_trial_start(trial)
    cb.log_trial_result(1, trial, {"step": 40, "training_iteration": 1, "worst_iou": 0.3})
    cb.log_trial_result(2, trial, {"step": 80, "training_iteration": 2, "worst_iou": 0.4})
    cb.log_trial_end(trial)
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.info.run_name == "mcce (t1)"
    got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "worst_iou")]
    assert sorted(got) == [(40, pytest.approx(0.3)), (80, pytest.approx(0.4))]
