"""A run restored from the checkpoint of its last step reports its final evaluation once.

The worker loop runs in this process with Ray Train's per-worker functions replaced by
fakes (no Ray is started): a fresh run of 2 steps writes its checkpoint at step 2 (the
last); an attempt restored from that checkpoint must evaluate the restored model and
report once (the fault: it skipped the loop and reported nothing, so Tune had no result
for a trial that had trained to the end).
"""

from __future__ import annotations

import contextlib
import shutil
import types

import pytest
import torch

import ray
import ray.train
import ray.train.torch
from tce_ray.train import worker_loop as wl
from tce_ray.train.runspec import RunSpec


class _Checkpoint:
    def __init__(self, path):
        self.path = str(path)

    @contextlib.contextmanager
    def as_directory(self):
        yield self.path


class _NoLive:
    def __init__(self, *a, **k):
        pass

    def set_step(self, *a):
        pass

    def set_iou(self, *a):
        pass

    def set_weights(self, *a):
        pass


def _run() -> RunSpec:
    return RunSpec.model_validate({
        "data": {"name": "synthetic", "options": {"num_images": 8, "image_size": [32, 32]}, "loader_workers": 0},
        "model": {"backbone": "tiny"},
        "loss": {"name": "mcce"},
        "train": {"steps": 2, "eval_every": 2, "batch_size": 2, "num_workers": 1, "seed": 3},
        "objectives": ["worst_iou", "iou_std"],
    })


@pytest.fixture
def fake_train(monkeypatch, tmp_path):
    """Ray Train's worker-side calls as fakes; returns (reports, set_checkpoint)."""
    reports: list[tuple[dict, str | None]] = []
    current: dict[str, _Checkpoint | None] = {"ckpt": None}
    copies = iter(range(1000))

    def report(metrics, checkpoint=None):
        saved = None
        if checkpoint is not None:  # the worker deletes its temporary folder after the report: keep a copy
            saved = str(tmp_path / f"saved_{next(copies)}")
            shutil.copytree(checkpoint.path, saved)
        reports.append((dict(metrics), saved))

    ctx = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
    monkeypatch.setattr(ray.train, "get_context", lambda: ctx)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: current["ckpt"])
    monkeypatch.setattr(ray.train, "report", report)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda m: m)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(get_node_id=lambda: "node0"))
    monkeypatch.setattr(wl, "LiveMetrics", _NoLive)

    def set_checkpoint(path):
        current["ckpt"] = _Checkpoint(path) if path else None

    return reports, set_checkpoint


def _config(tmp_path) -> dict:
    return {"run": _run().model_dump(mode="json"), "run_name": "r0", "state_dir": str(tmp_path / "state"),
            "cache_dir": None, "debug": {}}


def test_restored_at_the_last_step_reports_its_final_evaluation_once(fake_train, tmp_path):
    reports, set_checkpoint = fake_train
    first = wl.train_loop_per_worker(_config(tmp_path))  # a fresh run: trains 2 steps, reports at step 2
    assert first["step"] == 2 and first["start_step"] == 0
    assert len(reports) == 1
    final, ckpt_dir = reports[0]
    assert final["step"] == 2 and final["restored_from_step"] == -1 and ckpt_dir is not None

    reports.clear()
    set_checkpoint(ckpt_dir)  # the run died after this checkpoint, before Tune saw its report
    again = wl.train_loop_per_worker(_config(tmp_path))
    assert again["start_step"] == 2 and again["step"] == 2
    assert again["step_times_s"] == []  # nothing was trained again
    assert len(reports) == 1, "a run restored at its last step must report exactly once"
    metrics, ckpt2 = reports[0]
    assert metrics["step"] == 2 and metrics["restored_from_step"] == 2
    # the same model evaluated on the same validation set: the same final metrics
    for key in ("miou", "worst_iou", "iou_std"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-12), key
    assert metrics["lr"] == pytest.approx(final["lr"])
    # the checkpoint it reports again is the restored state
    a = torch.load(f"{ckpt_dir}/state.pt", weights_only=True)
    b = torch.load(f"{ckpt2}/state.pt", weights_only=True)
    assert a["step"] == b["step"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_restored_before_the_last_step_trains_the_rest(fake_train, tmp_path):
    reports, set_checkpoint = fake_train
    run = _run().model_dump(mode="json")
    run["train"].update(steps=3, eval_every=2)
    config = {**_config(tmp_path), "run": run}
    wl.train_loop_per_worker(config)
    assert [m["step"] for m, _ in reports] == [2, 3]
    step2 = reports[0][1]
    reports.clear()
    set_checkpoint(step2)
    out = wl.train_loop_per_worker(config)
    assert out["start_step"] == 2 and [m["step"] for m, _ in reports] == [3]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_train_run_restored_at_its_last_step_reports_once(ray_session, tmp_path):
    """End to end on Ray Train: a finished run started again under the same name and storage
    (as a Tune trial restored after a hard kill of the study) restores the checkpoint of its
    last step, trains nothing, and still ends with its final metrics."""
    from tce_ray.train.trainer import run_training

    run = _run()
    first = run_training(run, name="done", storage_path=str(tmp_path))
    assert first.error is None and first.metrics["step"] == 2 and first.metrics["restored_from_step"] == -1
    again = run_training(run, name="done", storage_path=str(tmp_path))
    assert again.error is None
    m = again.metrics
    assert m is not None and m["step"] == 2 and m["restored_from_step"] == 2
    assert m["miou"] == pytest.approx(first.metrics["miou"], abs=1e-12)
    assert list(again.metrics_dataframe["step"])[-1] == 2
