"""The class tilt on the loss in whole runs on Ray: one state shared by two workers (gloo),
checkpointed with the run (the pieces: tests/test_class_tilt.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tce_ray.core.class_tilt import ClassTiltState, tilted_class_weights
from tce_ray.train.checkpointing import load_training_state
from tce_ray.train.runspec import RunSpec
from tce_ray.train.trainer import run_training
from tce_ray.train.weights_actor import state_hash
from tce_ray.train.worker_loop import build_datasets

torch.set_num_threads(1)


def tiny_class_tilt_run(loss: str = "class_tilt_ce", **loss_settings) -> RunSpec:
    """Synthetic 48x64 images, the tiny backbone, 2 workers, 8 steps, 2 evaluations."""
    return RunSpec.model_validate({
        "data": {"name": "synthetic", "options": {"num_images": 32, "image_size": [48, 64]}, "loader_workers": 0},
        "loss": {"name": loss, "t": 2.0, "gamma": 0.3, **loss_settings},
        "train": {"steps": 8, "batch_size": 2, "eval_every": 4, "num_workers": 2, "max_failures": 0,
                  "weight_sync_every": 1},
        "objectives": ["worst_iou", "iou_std"],
    })  # fmt: skip


def _checkpoint_state(result) -> dict:
    with result.checkpoint.as_directory() as d:
        return load_training_state(d)


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("loss,signal", [("class_tilt_ce", "ce"), ("class_tilt_lovasz", "iou")])
def test_two_workers_share_one_class_tilt_state(ray_session, tmp_path, loss, signal):
    run = tiny_class_tilt_run(loss, class_signal=signal, weight_floor=0.1)
    result = run_training(run, name=f"ct-{signal}", storage_path=str(tmp_path))
    m = result.metrics
    names = build_datasets(run)[0].class_names
    assert result.error is None and m["step"] == 8 and m["world_size"] == 2 and math.isfinite(m["loss"])
    # ONE state: every step of both workers reported into it exactly once
    assert m["weight_updates"] == 8 * 2 and m["tilt_reports_skipped"] == 0 and m["actor_errors"] == 0
    assert 1 <= m["weights_age_steps_max"] <= 2 and m["weights_lag_bound_steps"] == m["weights_age_steps_max"]
    state = _checkpoint_state(result)
    ws = state["weight_state"]
    assert ws["kind"] == "class_tilt" and ws["signal"] == signal and ws["num_updates"] == 16
    assert state_hash(ws) == state["weight_state_hash"] == m["weight_state_hash"]
    # the reported weights are softmax(t R) of the checkpointed running losses, by hand
    restored = ClassTiltState.from_state_dict(ws)
    r, seen = restored.running_loss, restored.seen
    z = np.where(seen, 2.0 * np.nan_to_num(r), -np.inf)
    by_hand = np.where(seen, 0.9 * np.exp(z - z.max()) / np.exp(z - z.max()).sum() + 0.1 / seen.sum(), 0.0)
    w = np.array([m[f"weights/{c}"] for c in names])
    np.testing.assert_allclose(w, by_hand, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(w, tilted_class_weights(np.nan_to_num(r), seen, 2.0, 0.1), rtol=1e-12)
    assert w.sum() == pytest.approx(1.0) and not np.allclose(w[seen], w[seen][0])
    for c, rc in zip(names, r):
        assert (math.isnan(m[f"class_loss/{c}"]) and math.isnan(rc)) or m[f"class_loss/{c}"] == pytest.approx(rc)
    assert list(result.metrics_dataframe["step"]) == [4, 8]
