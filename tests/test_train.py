"""tce_ray.train.trainer: the driver side's pieces, then whole runs of the worker loop on Ray
(the worker loop's pieces: tests/test_worker_loop.py)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from tce_ray.train.checkpointing import load_training_state
from tce_ray.core.losses import FocalLoss, MCCE, TiltedCrossEntropy, focal_alpha_from_frequencies
from tce_ray.models import deeplabv3plus
from tce_ray.train.runspec import RunSpec
from tce_ray.data.sampling import ClassIndex
from tce_ray.train.trainer import build_trainer, make_loss, run_state_dir, run_training, start_weight_actor, trainer_config
from tce_ray.train.worker_loop import (
    FATAL_MARKER,
    NO_HOOKS,
    FaultInjection,
    build_datasets,
    make_hooks,
    poly_lr,
    train_loop_per_worker,
)
from tce_ray.train.weights_actor import actor_name, state_hash

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
    hooks = make_hooks({"nan_at_step": 3}, restored=False, rank=0)
    assert isinstance(hooks, FaultInjection) and hooks.nan_at_step == 3
    assert make_hooks(None, restored=False, rank=0) is NO_HOOKS and make_hooks({}, restored=True, rank=1) is NO_HOOKS
    with pytest.raises(ValueError, match="unknown debug option"):
        make_hooks({"nan_step": 3}, restored=False, rank=0)
    with pytest.raises(ValueError, match="unknown debug option"):
        trainer_config(tiny_run("mcce"), name="x", storage_path="/tmp", debug={"nan_step": 3})
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


def test_make_loss_builds_the_baselines_from_a_run():
    """The baseline losses come out of the registry with their settings (scheme -> class index)."""
    from tce_ray.core.baseline_losses import (
        ClassBalancedCrossEntropy, LovaszSoftmax, SoftDiceLoss, WeightedCrossEntropy, median_frequency_weights,
        effective_number_weights,
    )

    run = tiny_run()
    ds, _ = build_datasets(run)
    index = ClassIndex.from_dataset(ds)
    k = ds.num_classes
    as_ = lambda **loss: run.merged({"loss": loss})  # noqa: E731
    weighted = make_loss(as_(name="ce_weighted"), k, index)
    assert isinstance(weighted, WeightedCrossEntropy)
    assert torch.allclose(weighted.weight, median_frequency_weights(index))
    eff = make_loss(as_(name="ce_weighted", class_weights="effective_number", beta=0.99), k, index)
    assert torch.allclose(eff.weight, effective_number_weights(index.counts.sum(axis=0), 0.99))
    explicit = make_loss(as_(name="ce_weighted", class_weights=[1.0] * k), k, None)  # a list needs no index
    assert explicit.weight.tolist() == [1.0] * k
    with pytest.raises(ValueError, match="class index"):
        make_loss(as_(name="ce_weighted"), k, None)
    with pytest.raises(ValueError, match="values; the data set has"):
        make_loss(as_(name="ce_weighted", class_weights=[1.0, 2.0]), k, None)
    assert make_loss(as_(name="ce_balanced", scope="batch"), k).scope == "batch"
    assert make_loss(as_(name="lovasz", per_image=True), k).per_image is True
    dice = make_loss(as_(name="dice", ce_weight=0.5), k)
    assert isinstance(dice, SoftDiceLoss) and dice.ce_weight == 0.5
    assert isinstance(make_loss(as_(name="ce_balanced"), k), ClassBalancedCrossEntropy)
    assert isinstance(make_loss(as_(name="lovasz"), k), LovaszSoftmax)


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("loss", ["ce_weighted", "ce_balanced", "lovasz", "dice"])
def test_baseline_losses_train(ray_session, tmp_path, loss):
    run = tiny_run(loss, steps=2, eval_every=2)
    result = fit_local(run, name=f"b-{loss}", storage_path=tmp_path)
    assert result.error is None and result.metrics["step"] == 2 and math.isfinite(result.metrics["loss"])
