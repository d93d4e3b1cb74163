"""tce_ray.train (+ evaluation, checkpointing, live_metrics): the pieces alone, then whole runs on Ray."""

from __future__ import annotations

import math
import re
import time
import urllib.request

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from tce_ray.checkpointing import CHECKPOINT_FILE, load_training_state, save_training_state
from tce_ray.evaluation import evaluation_metrics, shard_indices
from tce_ray.losses import FocalLoss, MCCE, TiltedCrossEntropy, focal_alpha_from_frequencies
from tce_ray.models import deeplabv3plus
from tce_ray.objectives import get_objective
from tce_ray.runspec import RunSpec
from tce_ray.sampling import ClassIndex
from tce_ray.train import (
    FATAL_MARKER,
    _Debug,
    _epoch_batches,
    build_datasets,
    build_trainer,
    make_loss,
    poly_lr,
    run_state_dir,
    run_training,
    start_weight_actor,
    trainer_config,
    train_loop_per_worker,
)
from tce_ray.weights_actor import actor_name, state_hash

torch.set_num_threads(1)


def tiny_run(loss: str = "tce_stochastic", **train) -> RunSpec:
    """A run small enough for a test: synthetic 48x64 images, the tiny backbone, 2 workers."""
    return RunSpec.model_validate(
        {
            "data": {
                "name": "synthetic",
                "options": {"num_images": 32, "image_size": [48, 64]},
                "loader_workers": 0,
            },
            "loss": {"name": loss, "t": 1.0, "gamma": 0.2},
            "train": {"steps": 8, "batch_size": 2, "eval_every": 4, "num_workers": 2, "max_failures": 0,
                      "weight_sync_every": 1, **train},
            "objectives": ["worst_iou", "iou_std", "bottom25_miou"],
        }
    )


# ----------------------------------------------------------------------------- pieces
def test_poly_lr_matches_the_formula():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9, rel=1e-12)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    assert poly_lr(0.02, 30, 100, 0.0) == 0.02  # power 0: constant
    with pytest.raises(ValueError, match="step"):
        poly_lr(0.01, 101, 100, 0.9)


def test_make_loss_per_name():
    run = tiny_run()
    ds, _ = build_datasets(run)
    index = ClassIndex.from_dataset(ds)
    k = ds.num_classes
    for name, cls in (("mcce", MCCE), ("tce_stochastic", MCCE), ("tce_image", TiltedCrossEntropy), ("tce_class", TiltedCrossEntropy)):
        assert isinstance(make_loss(run.model_copy(update={"loss": run.loss.model_copy(update={"name": name})}), k, index), cls)
    focal_run = run.model_copy(update={"loss": run.loss.model_copy(update={"name": "focal"})})
    focal = make_loss(focal_run, k, index)
    assert isinstance(focal, FocalLoss)
    # alpha from the training set's pixel frequencies (inverse frequency, CONTRACT normalisation)
    expected = focal_alpha_from_frequencies(index.pixel_frequencies())
    logits = torch.randn(2, k, 6, 7)
    target = torch.randint(0, k, (2, 6, 7))
    ref = FocalLoss(alpha=expected, gamma=2.0)
    assert focal(logits, target).item() == pytest.approx(ref(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="class index"):
        make_loss(focal_run, k, None)
    bad = run.model_copy(update={"loss": run.loss.model_copy(update={"name": "focal", "focal_alpha": [1.0, 2.0]})})
    with pytest.raises(ValueError, match="focal_alpha has 2 values"):
        make_loss(bad, k, index)


def test_epoch_batches_cover_each_epoch_and_resume_mid_epoch():
    data = list(range(10))
    s = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3, drop_last=True)
    it = _epoch_batches(s, 2, start_epoch=0, skip=0)
    run = [next(it) for _ in range(6)]  # 5 indices per rank -> 2 batches per epoch; 3 epochs
    expected = []
    for e in range(3):
        s.set_epoch(e)
        idx = list(s)
        expected += [idx[0:2], idx[2:4]]
    assert run == expected
    resumed = _epoch_batches(s, 2, start_epoch=1, skip=1)  # step 3 = epoch 1, second batch
    assert [next(resumed) for _ in range(3)] == expected[3:6]


def test_shard_indices_cover_everything_once():
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert shards[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        shard_indices(5, 3, 3)


def test_evaluation_metrics_on_a_hand_made_confusion_matrix():
    # rows = truth, cols = prediction; class 2 absent from the data and never predicted
    cm = torch.tensor([[3, 1, 0], [1, 1, 0], [0, 0, 0]])
    m = evaluation_metrics(cm, ("a", "b", "c"), ["worst_iou", "iou_std"])
    iou_a, iou_b = 3 / (4 + 4 - 3), 1 / (2 + 2 - 1)  # TP / (row + col - TP)
    assert m["iou/a"] == pytest.approx(iou_a) and m["iou/b"] == pytest.approx(iou_b)
    assert math.isnan(m["iou/c"])
    assert m["miou"] == pytest.approx((iou_a + iou_b) / 2)
    assert m["worst_iou"] == pytest.approx(iou_b)
    assert m["iou_std"] == pytest.approx(np.std([iou_a, iou_b], ddof=1))
    assert m["iou_std"] == get_objective("iou_std")(np.array([iou_a, iou_b, np.nan]))
    with pytest.raises(ValueError, match="every IoU is NaN"):
        evaluation_metrics(torch.zeros(3, 3, dtype=torch.int64), ("a", "b", "c"), ["miou"])
    with pytest.raises(ValueError, match="class names"):
        evaluation_metrics(cm, ("a", "b"), [])


def test_checkpoint_roundtrip_and_validation(tmp_path):
    net = deeplabv3plus(3, "tiny", 16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(1, 3, 32, 32)).mean().backward()
    opt.step()
    ws = {"version": 1, "log_r": [0.1, 0.2, 0.3]}
    state = {
        "format": 1, "step": 7, "model": net.state_dict(), "optimizer": opt.state_dict(), "scaler": None,
        "rng": {"seed": 0, "step": 7}, "weight_state": ws, "weight_state_hash": state_hash(ws), "run": {"x": [1, 2]},
    }
    save_training_state(tmp_path, state)
    back = load_training_state(tmp_path)
    assert back["step"] == 7 and back["weight_state"] == ws and back["weight_state_hash"] == state_hash(ws)
    fresh = deeplabv3plus(3, "tiny", 16)
    fresh.load_state_dict(back["model"])
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9).load_state_dict(back["optimizer"])
    with pytest.raises(ValueError, match="lacks"):
        save_training_state(tmp_path, {"format": 1})
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_FILE):
        load_training_state(tmp_path / "nowhere")


def test_trainer_config_and_a_stale_fatal_marker(tmp_path):
    run = tiny_run("mcce")
    state_dir = run_state_dir(str(tmp_path), "again")
    assert state_dir == str(tmp_path / "again" / "tce_state")  # on the run's storage
    (tmp_path / "again" / "tce_state").mkdir(parents=True)
    (tmp_path / "again" / "tce_state" / FATAL_MARKER).write_text('{"message": "non-finite loss (nan) at step 3"}')
    config = trainer_config(run, name="again", storage_path=str(tmp_path), debug={"nan_at_step": 2})
    # a new run under the same name is not blocked by the earlier run's marker
    assert not (tmp_path / "again" / "tce_state" / FATAL_MARKER).exists()
    assert RunSpec.model_validate(config["run"]) == run
    assert config["run_name"] == "again" and config["state_dir"] == state_dir
    assert config["cache_dir"] == str(tmp_path / ".class_index_cache")
    assert config["debug"] == {"nan_at_step": 2}
    with pytest.raises(ValueError, match="name"):
        trainer_config(run, name="a/b", storage_path=str(tmp_path))


def test_debug_options_are_checked():
    assert _Debug.parse({"nan_at_step": 3}).nan_at_step == 3
    with pytest.raises(ValueError, match="unknown debug option"):
        _Debug.parse({"nan_step": 3})
    with pytest.raises(TypeError, match="RunSpec"):
        build_trainer({"train": {}}, name="x", storage_path="/tmp")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- whole runs
def _checkpoint_state(result) -> dict:
    with result.checkpoint.as_directory() as d:
        return load_training_state(d)


def fit_local(run: RunSpec, name: str, storage_path) -> "ray.train.Result":
    """The same loop in Ray Train's local mode (num_workers=0: in this process, no DDP)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=trainer_config(run, name=name, storage_path=str(storage_path)),
        scaling_config=ray.train.ScalingConfig(num_workers=0),
        run_config=ray.train.RunConfig(name=name, storage_path=str(storage_path)),
    )
    return trainer.fit()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_stochastic_tce_run(ray_session, tmp_path):
    run = tiny_run("tce_stochastic")
    t0 = time.time()
    result = run_training(run, name="stoch", storage_path=str(tmp_path))
    print(f"run took {time.time() - t0:.1f} s")
    m = result.metrics
    names = build_datasets(run)[0].class_names
    assert result.error is None and m["step"] == 8 and m["epoch"] == 8 / (32 // 4) and m["world_size"] == 2
    for key in ("loss", "miou", "worst_iou", "iou_std", "bottom25_miou", "images_per_s", "step_time_s", "lr"):
        assert math.isfinite(m[key]), key
    assert set(f"iou/{c}" for c in names) <= set(m)
    w = np.array([m[f"weights/{c}"] for c in names])
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert not np.allclose(w[w > 0], w[w > 0][0])  # the tilt moved the weights off uniform
    # every step of both workers reported exactly once, and nothing else
    assert m["weight_updates"] == 8 * 2 and m["tilt_reports_skipped"] == 0 and m["actor_errors"] == 0
    assert m["restored_from_step"] == -1
    # lag: synced every step, no loader processes -> the weights are at most 1-2 steps old
    assert 1 <= m["weights_age_steps_max"] <= 2 and m["weights_lag_bound_steps"] == m["weights_age_steps_max"]
    # two evaluations, both with checkpoints
    assert list(result.metrics_dataframe["step"]) == [4, 8]
    state = _checkpoint_state(result)
    assert state["step"] == 8 and state["weight_state"]["num_updates"] == m["weight_updates"]
    assert state_hash(state["weight_state"]) == state["weight_state_hash"] == m["weight_state_hash"]
    net = deeplabv3plus(len(names), "tiny", 16)
    net.load_state_dict(state["model"])  # unwrapped: no "module." prefix
    with pytest.raises(ValueError):  # run_training killed the actor at the end
        ray_session.get_actor(actor_name("stoch"))


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_stochastic_class_signal_with_prefetching_loader(ray_session, tmp_path):
    run = tiny_run("tce_stochastic", steps=6, eval_every=6)
    run.loss.tilt_signal = "class"
    run.loss.weight_floor = 0.2
    run.data.loader_workers = 1  # the DataLoader draws 2 batches ahead
    actor = start_weight_actor(run, name="stoch-class", storage_path=str(tmp_path))
    try:
        m = fit_local(run, "stoch-class", tmp_path).metrics
    finally:
        ray_session.kill(actor)
    names = build_datasets(run)[0].class_names
    assert m["step"] == 6 and m["world_size"] == 1
    assert m["weight_updates"] + m["tilt_reports_skipped"] == 6  # one report per step unless cropped out
    w = np.array([m[f"weights/{c}"] for c in names])
    drawable = w > 0
    assert w.sum() == pytest.approx(1.0)
    assert w[drawable].min() >= 0.2 / drawable.sum() - 1e-12  # the weight floor
    assert m["weights_lag_bound_steps"] == m["weights_age_steps_max"] + 2  # + prefetch_factor * 1 process


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_mcce_run_with_distributed_shuffling(ray_session, tmp_path):
    run = tiny_run("mcce", steps=10, eval_every=5)
    run.data.loader_workers = 1
    result = run_training(run, name="mcce", storage_path=str(tmp_path))
    m = result.metrics
    assert m["step"] == 10 and m["epoch"] == 10 / 8 and math.isfinite(m["loss"]) and math.isfinite(m["worst_iou"])
    assert m["lr"] == pytest.approx(poly_lr(0.01, 9, 10, 0.9))  # the lr of the last step
    assert not any(k.startswith("weights/") for k in m)
    state = _checkpoint_state(result)
    assert state["weight_state"] is None and state["step"] == 10
    assert state["run"]["loss"]["name"] == "mcce"
    assert list(result.metrics_dataframe["step"]) == [5, 10]


@pytest.mark.parametrize("loss", ["focal", "tce_image", "tce_class"])
def test_other_losses_in_local_mode(tmp_path, loss):
    m = fit_local(tiny_run(loss, steps=3, eval_every=3), f"local-{loss}", tmp_path).metrics
    assert m["step"] == 3 and m["world_size"] == 1 and math.isfinite(m["loss"]) and math.isfinite(m["iou_std"])
    assert not any(k.startswith("weights/") for k in m)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_live_metrics_reach_the_prometheus_endpoint(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Reporter:
        def set(self):
            from tce_ray.live_metrics import LiveMetrics

            lm = LiveMetrics("live-test", 1, ["a", "b"])
            lm.set_weights(np.array([0.25, 0.75]))
            lm.set_iou(np.array([0.5, np.nan]))
            lm.set_step(3, 0.5, 8.0)

    reporter = Reporter.remote()
    ray.get(reporter.set.remote())
    port = ray._private.worker.global_worker.node.metrics_export_port
    want = {
        'ray_tce_class_weight{.*class="b".*run="live-test"': 0.75,
        'ray_tce_class_iou{.*class="a".*run="live-test"': 0.5,
        'ray_tce_step_time_seconds{.*rank="1".*run="live-test"': 0.5,
        'ray_tce_images_per_second{.*rank="1".*run="live-test"': 8.0,
    }
    deadline = time.time() + 60
    found: dict[str, float] = {}
    while time.time() < deadline and len(found) < len(want):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for pattern in want:
            for line in text.splitlines():
                if re.match(pattern, line):
                    found[pattern] = float(line.rsplit(" ", 1)[1])
        time.sleep(1)
    assert found == want
    # the NaN IoU of the absent class "b" is not exported
    assert not [l for l in text.splitlines() if re.match('ray_tce_class_iou{.*class="b".*run="live-test"', l)]
    ray.kill(reporter)
