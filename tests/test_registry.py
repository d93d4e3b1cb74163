"""The registries (tce_ray.core.registry): one entry per loss / setting / data set, and everything
that derives from it (schema, search space, make_loss, labels, build_dataset); a toy loss and
a toy data set registered from outside the package, through a real study on Ray."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from tce_ray.core import registry
from tce_ray.study.config import ConfigError, parse_config
from tce_ray.core.losses import MCCE, FocalLoss, TiltedCrossEntropy, make_loss, needs_class_index, needs_weight_actor
from tce_ray.core.registry import Setting, get_loss, get_setting, register_loss, register_setting
from tce_ray.results.tables import group_key, settings_label
from tce_ray.train.runspec import LossSpec, RunSpec
from tce_ray.study.search_space import SearchSpace, relevant_settings, trial_run

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def clean_registry():
    """Whatever a test registers is gone afterwards (the other test files see the built-ins)."""
    registry.list_losses()  # the built-ins are in before the copy
    saved = {kind: dict(table) for kind, table in registry._TABLES.items()}
    origins = dict(registry._ORIGIN)
    yield registry
    for kind, table in registry._TABLES.items():
        table.clear()
        table.update(saved[kind])
    registry._ORIGIN.clear()
    registry._ORIGIN.update(origins)
    registry._STATE["version"] += 1


@pytest.fixture
def toy(clean_registry):
    import toy_plugins  # tests/ is on sys.path: a module outside the package

    toy_plugins.register()
    return toy_plugins


def _study(**extra):
    base = {"name": "r", "search": {"num_samples": 1}}
    return parse_config({**base, **extra})


# ----------------------------------------------------------------- the built-in entries


def test_builtin_entries_drive_the_derived_names():
    assert registry.list_losses() == [
        "mcce", "focal", "tce_image", "tce_class", "tce_stochastic", "ce_weighted", "ce_balanced", "lovasz", "dice",
        "class_tilt_ce", "class_tilt_lovasz"]
    assert registry.list_datasets() == ["synthetic", "cityscapes", "ade20k", "camvid", "folder"]
    assert [p.optuna_name for p in registry.search_params()] == [
        "loss/t", "loss/gamma", "loss/focal_gamma", "loss/tilt_signal", "loss/weight_floor",
        "loss/beta", "loss/scope", "loss/per_image", "loss/ce_weight", "loss/class_signal", "loss/weight_cap",
        "sampling/mode", "sampling/temperature", "sampling/image_power", "sampling/class_crop"]
    assert relevant_settings("tce_stochastic") == ("t", "gamma", "tilt_signal", "weight_floor")
    assert relevant_settings("focal") == ("focal_gamma",) and relevant_settings("mcce") == ()
    run = RunSpec()
    as_ = lambda **loss: run.merged({"loss": loss})  # noqa: E731
    assert [needs_weight_actor(as_(name=n)) for n in registry.list_losses()] == [False] * 4 + [True] + [False] * 4 + [True] * 2
    assert relevant_settings("class_tilt_ce") == ("t", "gamma", "weight_floor", "class_signal", "weight_cap")
    assert needs_class_index(as_(name="focal")) and not needs_class_index(as_(name="focal", focal_alpha="none"))
    assert needs_class_index(as_(name="tce_stochastic")) and not needs_class_index(as_(name="tce_class"))
    built = make_loss(as_(name="tce_class", t=0.25), num_classes=3)
    assert isinstance(built, TiltedCrossEntropy) and (built.level, built.t) == ("class", 0.25)
    assert type(make_loss(as_(name="tce_stochastic"), num_classes=3)) is MCCE
    focal = make_loss(as_(name="focal", focal_alpha=[1.0, 2.0, 3.0], focal_gamma=0.5), num_classes=3)
    assert isinstance(focal, FocalLoss) and focal.gamma == 0.5 and focal.alpha.tolist() == [1.0, 2.0, 3.0]


def test_a_bound_stated_once_holds_everywhere(clean_registry):
    """gamma's bound lives in its Setting: the run schema, an explicit configuration and the
    search range all follow it when it changes."""
    register_setting(replace(get_setting("gamma"), le=0.5), override=True)
    for bad, path in (({"loss": {"gamma": 0.7}}, "loss.gamma"),
                      ({"search": {"num_samples": 1, "configurations": [{"name": "mcce", "gamma": 0.7}]}},
                       "search.configurations.0.gamma"),
                      ({"search": {"num_samples": 1, "gamma": {"low": 0.1, "high": 0.7}}}, "search.gamma.high")):
        with pytest.raises(ConfigError) as info:
            parse_config({"name": "b", "search": {"num_samples": 1}, **bad})
        assert info.value.path == path and ("0.5" in str(info.value)), str(info.value)
    assert LossSpec(gamma=0.5).gamma == 0.5


def test_t_must_be_finite_wherever_it_is_given():
    for bad, path in (({"loss": {"t": float("inf")}}, "loss.t"),
                      ({"search": {"num_samples": 1, "t": float("nan")}}, "search.t"),
                      ({"search": {"num_samples": 1, "configurations": [{"name": "tce_class", "t": float("-inf")}]}},
                       "search.configurations.0.t")):
        with pytest.raises(ConfigError, match="finite") as info:
            parse_config({"name": "f", "search": {"num_samples": 1}, **bad})
        assert info.value.path == path


def test_duplicates_are_loud_and_identical_entries_are_not(clean_registry):
    with pytest.raises(ValueError, match="loss 'mcce' is already registered .*tce_ray.core.loss_catalog.*override=True"):
        register_loss("mcce")(FocalLoss)
    mcce = get_loss("mcce")
    register_loss("mcce", factory=mcce.factory, doc=mcce.doc)  # the same definition again: nothing happens
    assert get_loss("mcce") is mcce
    with pytest.raises(ValueError, match="setting 't' is already registered"):
        register_setting(Setting("t", float, 0.0))
    with pytest.raises(ValueError, match="unknown setting 'tt'.*Setting"):
        register_loss("x_loss", settings=["tt"])(MCCE)
    with pytest.raises(ValueError, match="does not take"):
        register_loss("x_loss", settings=["t"], params={"gamma": "gamma"})(MCCE)
    with pytest.raises(ValueError, match="name must be"):
        register_loss("a.b")(MCCE)
    register_loss("mcce", doc="replaced", override=True)(MCCE)
    assert get_loss("mcce").doc == "replaced"


# ----------------------------------------------------------------- a plugin, without Ray


def test_a_loss_from_outside_is_one_entry(toy):
    cfg = _study(loss={"name": "toy_scaled_ce", "toy_scale": 3.0})
    assert cfg.run.loss.toy_scale == 3.0 and cfg.run.loss.t == 1.0  # every setting, with its default
    built = make_loss(cfg.run, num_classes=3)
    assert isinstance(built, toy.ScaledCE) and built.scale == 3.0
    logits, target = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    assert built(logits, target).item() == pytest.approx(3.0 * MCCE()(logits, target).item(), rel=1e-6)
    # its bounds and its name are checked like the built-ins', with the path and line
    text = "name: r\nloss:\n  name: toy_scaled_ce\n  toy_scale: 0\nsearch: {num_samples: 1}\n"
    import yaml

    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_load(text), file="s.yaml", text=text)
    assert str(info.value) == "s.yaml:4: loss.toy_scale: Input should be greater than 0 (got 0)"
    with pytest.raises(ConfigError, match="did you mean 'toy_scale'"):
        _study(loss={"name": "toy_scaled_ce", "toy_scal": 2})
    with pytest.raises(ConfigError, match="toy_scale must lie in \\(0, 10\\]"):
        _study(search={"num_samples": 1, "toy_scale": {"low": 1, "high": 20}})


def test_the_search_space_and_labels_follow_the_registry(toy):
    cfg = _study(search={"num_samples": 6, "losses": ["toy_scaled_ce", "tce_class"], "t": {"low": 0.1, "high": 1},
                         "toy_scale": {"low": 0.5, "high": 4.0},
                         "configurations": [{"name": "toy_scaled_ce", "toy_scale": 2.0}]})
    space = SearchSpace.from_config(cfg)
    assert space.param_names() == ["loss/name", "loss/t", "loss/toy_scale"]
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    space.enqueue(study)
    seen = set()
    for _ in range(7):
        trial = study.ask()
        out = space(trial)
        name = out["loss/name"]
        seen.add(name)
        expected = {"toy_scaled_ce": {"loss/toy_scale"}, "tce_class": {"loss/t"}}[name]
        assert {k for k in out if k.startswith("loss/")} == {"loss/name"} | expected
        run = trial_run(cfg.run, {"loss": {k[5:]: v for k, v in out.items() if k.startswith("loss/")}})
        if name == "toy_scaled_ce":
            assert 0.5 <= run.loss.toy_scale <= 4.0 and make_loss(run, 3).scale == run.loss.toy_scale
        study.tell(trial, [0.0, 0.0])
    assert seen == {"toy_scaled_ce", "tce_class"}
    row = {"config/loss/name": "toy_scaled_ce", "config/loss/toy_scale": 2.0}
    assert settings_label(row) == "toy_scaled_ce ×=2"
    row2 = {"config/loss/name": "tce_stochastic", "config/loss/t": 0.1, "config/loss/tilt_signal": "batch",
            "config/loss/weight_floor": 0.0, "config/sampling/image_power": 1.0}
    assert settings_label(row2) == "tce_stochastic t=0.1 image_power=1"
    assert group_key(row2) == "tce_stochastic sampling.image_power=1.0 t=0.1 tilt_signal=batch weight_floor=0.0"


def test_a_search_parameter_at_another_path(clean_registry):
    """A run value outside the loss (``train.weight_sync_every`` stands in for a new section's
    value): searchable by its own key, asked after the loss settings, merged into its section."""
    registry.register_search_param(registry.SearchParam(
        "sync", "train.weight_sync_every", "choice", choices=(1, 4),
        applies=lambda view: view["loss.name"] == "tce_stochastic"))
    cfg = _study(search={"num_samples": 1, "losses": ["tce_stochastic", "mcce"], "sync": [1, 4],
                         "configurations": [{"name": "tce_stochastic", "train": {"weight_sync_every": 1}}]})
    space = SearchSpace.from_config(cfg)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    space.enqueue(study)
    trial = study.ask()
    out = space(trial)
    assert trial.params == {"loss/name": "tce_stochastic", "train/weight_sync_every": 1}
    assert out["train/weight_sync_every"] == 1
    nested = {"loss": {"name": out["loss/name"]}, "train": {"weight_sync_every": 1}, "study": {"seed": 3}}
    run = trial_run(cfg.run, nested)
    assert run.train.weight_sync_every == 1 and run.train.seed == 3
    with pytest.raises(ConfigError) as info:
        _study(search={"num_samples": 1, "sync": [1, 2]})
    assert info.value.path == "search.sync.1" and "1 or 4" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _study(search={"num_samples": 1, "configurations": [{"name": "mcce", "train": {"weight_sync_every": 0}}]})
    assert info.value.path == "search.configurations.0.train.weight_sync_every"


def test_a_data_set_from_outside_is_one_entry(toy, monkeypatch, tmp_path):
    from tce_ray.data import build_dataset

    cfg = _study(data={"name": "toy_boxes", "options": {"num_images": 4, "size": 16}})
    ds = build_dataset(cfg.run.data.name, "train", augment=False, **cfg.run.data.options)
    assert isinstance(ds, toy.ToyBoxes) and len(ds) == 4 and ds.num_classes == 3
    image, mask = ds[0]
    assert image.shape == (3, 16, 16) and set(np.unique(mask.numpy())) <= {0, 1, 2}
    with pytest.raises(ConfigError, match="toy_boxes data set is generated on the fly and takes no root"):
        _study(data={"name": "toy_boxes", "root": "/x"})
    # the messages about a missing root come from the entry
    registry.register_dataset("toy_files", "toy_plugins:build_toy_boxes", root_holds="boxes/ and bars/",
                              env_var="TOY_FILES_ROOT")
    monkeypatch.delenv("TOY_FILES_ROOT", raising=False)
    with pytest.raises(ConfigError, match="needs data.root: the folder holding boxes/ and bars/, or set TOY_FILES_ROOT"):
        _study(data={"name": "toy_files"})
    monkeypatch.setenv("TOY_FILES_ROOT", str(tmp_path))
    assert _study(data={"name": "toy_files"}).run.data.root == str(tmp_path)


def test_the_snapshot_carries_plugins_to_another_process(toy):
    snap = registry.plugin_snapshot()
    assert {(k, n) for k, n, _, _ in snap} == {("setting", "toy_scale"), ("loss", "toy_scaled_ce"),
                                                ("data set", "toy_boxes")}
    assert registry.snapshot_modules(snap) == ["toy_plugins"]
    dump = RunSpec.model_validate({"loss": {"name": "toy_scaled_ce", "toy_scale": 2.0}}).model_dump(mode="json")
    shipped = pickle.dumps(snap)
    for kind, name, _, _ in snap:  # a fresh process: only the built-ins
        del registry._TABLES[kind][name]
    registry._STATE["version"] += 1
    with pytest.raises(ValueError, match="toy_scale"):
        RunSpec.model_validate(dump)
    registry.install_snapshot(pickle.loads(shipped))
    assert RunSpec.model_validate(dump).loss.toy_scale == 2.0


# ----------------------------------------------------------------- a plugin, through a study on Ray


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_study_runs_the_plugin_loss_and_data_set(toy, ray_session, tmp_path):
    from tce_ray.study.runner import run_study

    config = {
        "name": "plugins", "plugins": ["toy_plugins"],
        "data": {"name": "toy_boxes", "options": {"num_images": 8, "size": 32}, "loader_workers": 0},
        "model": {"backbone": "tiny"},
        "loss": {"name": "toy_scaled_ce"},
        "train": {"steps": 1, "batch_size": 2, "eval_every": 1, "num_workers": 1, "max_failures": 0},
        "resources": {"max_concurrent_trials": 2},
        "search": {"num_samples": 1, "seed": 0, "toy_scale": {"low": 3.0, "high": 5.0},
                   "configurations": [{"name": "toy_scaled_ce", "toy_scale": 1.0},
                                      {"name": "toy_scaled_ce", "toy_scale": 2.0}]},
    }
    res = run_study(config, storage=tmp_path, progress=False)
    t = res.trials
    assert list(t["status"]) == ["completed"] * 3, t[["status", "error"]]
    assert list(t["config/loss/toy_scale"][:2]) == [1.0, 2.0] and 3.0 <= t.loc[2, "config/loss/toy_scale"] <= 5.0
    # one step from the same initialisation and batch: the loss is scale x the same CE
    assert t.loc[1, "train_loss"] == pytest.approx(2.0 * t.loc[0, "train_loss"], rel=1e-5)
    assert t.loc[2, "train_loss"] == pytest.approx(t.loc[2, "config/loss/toy_scale"] * t.loc[0, "train_loss"], rel=1e-5)
    assert sorted(c[4:] for c in t.columns if c.startswith("iou/")) == ["bar", "box", "ground"]
    assert list(t["label"][:2]) == ["toy_scaled_ce ×=1 [#0]", "toy_scaled_ce ×=2 [#1]"]
    assert pd.read_parquet(tmp_path / "plugins" / "groups.parquet")["n"].tolist() == [1, 1, 1]
