"""The study schema: one clear error (key path + line) per mistake, before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tce_ray.study.config import ConfigError, StudyConfig, expand_env, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"

GOOD = """\
name: t1
storage: ./results
data:
  name: synthetic
  options: {num_images: 8, image_size: [48, 64]}
loss: {name: mcce}
optim:
  lr: 0.01
train:
  steps: 4
  batch_size: 2
objectives: [worst_iou, iou_std]
search:
  num_samples: 2
  losses: [tce_image, tce_stochastic]
  t: {low: 0.1, high: 2.0}
  gamma: {low: 0.1, high: 0.5}
  configurations:
    - {name: mcce}
    - {name: tce_stochastic, t: 0.1}
"""


def _write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_good_config_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert isinstance(cfg, StudyConfig)
    assert cfg.search.total_trials() == 4
    run = cfg.run_for({"name": "tce_stochastic", "t": 0.3, "gamma": 0.2})
    assert run.loss.name == "tce_stochastic" and run.loss.t == 0.3 and run.loss.gamma == 0.2
    assert run.optim.lr == 0.01 and run.train.steps == 4
    assert cfg.experiment_path().endswith("/t1")
    assert cfg.evaluations_per_run() == 1  # eval_every (100) > steps: one report at the end


@pytest.mark.parametrize(
    "old,new,path,needle,words",
    [
        ("  lr: 0.01", "  lr: 0", "optim.lr", "lr: 0", ["greater than 0"]),
        ("  lr: 0.01", "  lr: -1e-3", "optim.lr", "lr: -1e-3", ["greater than 0"]),
        ("  steps: 4", "  stepz: 4", "train.stepz", "stepz", ["unknown key", "did you mean 'steps'"]),
        ("  batch_size: 2", "  batch_size: two", "train.batch_size", "batch_size", ["valid integer", "'two'"]),
        ("  gamma: {low: 0.1, high: 0.5}", "  gamma: {low: 0.1, high: 1.5}", "search.gamma.high", "gamma:", ["(0, 1]"]),
        ("  gamma: {low: 0.1, high: 0.5}", "  gamma: 0", "search.gamma", "gamma:", ["(0, 1]"]),
        ("loss: {name: mcce}", "loss: {name: mcce, gamma: 2}", "loss.gamma", "loss:", ["less than or equal to 1"]),
        ("loss: {name: mcce}", "loss: {name: tce}", "loss.name", "loss:", ["'tce_stochastic'", "'tce'"]),
        ("[tce_image, tce_stochastic]", "[tce_image, tce_stoch]", "search.losses.1", "losses:", ["'tce_stoch'"]),
        ("[worst_iou, iou_std]", "[worst_iou, iou_sd]", "objectives", "objectives:", ["unknown objective 'iou_sd'"]),
        ("  name: synthetic", "  name: cityscape", "data.name", "name: cityscape", ["did you mean 'cityscapes'"]),
        ("  t: {low: 0.1, high: 2.0}", "  t: {low: -0.1, high: 2.0}", "search.t.low", "t: {", ["allow_negative"]),
        ("  t: {low: 0.1, high: 2.0}", "  t: {low: 3, high: 2.0}", "search.t.high", "t: {", ["above low"]),
        ("  t: {low: 0.1, high: 2.0}", "  t: {low: 0.1, hi: 2.0}", "search.t.hi", "t: {", ["unknown key 'hi'"]),
        ("  t: {low: 0.1, high: 2.0}", "  t: fast", "search.t", "t: fast", ["a number", "range"]),
        ("    - {name: tce_stochastic, t: 0.1}", "    - {name: tce_stochastic, t: 0.1, gamma: 0}",
         "search.configurations.1.gamma", "t: 0.1, gamma", ["greater than 0"]),
        ("    - {name: mcce}", "    - {t: 1}", "search.configurations.0.name", "- {t: 1}", ["missing"]),
        ("name: t1", "name: t1\nresources: {max_concurrent_trials: 0}", "resources.max_concurrent_trials",
         "resources:", ["greater than or equal to 1"]),
        ("name: t1", "name: t1\nscheduler: {asha: {metric: miou}}", "scheduler.asha.metric", "scheduler:",
         ["not one of the study's objectives"]),
        ("name: t1", "name: t1\noptuna_storage: results/optuna.db", "optuna_storage", "optuna_storage",
         ["sqlite:///"]),
        ("name: t1", "name: my study", "name", "name: my study", ["folder name"]),
        ("  num_samples: 2", "  num_samples: 2\n  seeds: []", "search.seeds", "seeds:", ["empty list"]),
        ("  num_samples: 2", "  num_samples: 2\n  seeds: [0, 1, 0]", "search.seeds", "seeds:",
         ["duplicate seeds [0]", "[0, 1, 0]"]),
        ("  num_samples: 2", "  num_samples: 2\n  seeds: [0, one]", "search.seeds", "seeds:", ["integers", "'one'"]),
        ("  num_samples: 2", "  num_samples: 2\n  seeds: [0, 1.5]", "search.seeds", "seeds:", ["integers", "1.5"]),
        ("  num_samples: 2", "  num_samples: 2\n  seeds: [true]", "search.seeds", "seeds:", ["integers", "True"]),
        ("  num_samples: 2", "  num_samples: 2\n  seeds: 3", "search.seeds", "seeds:", ["a list of integer seeds"]),
        ("  num_samples: 2", "  num_samples: 2\n  seeds: [-1]", "search.seeds", "seeds:", ["[0, 2**32)", "-1"]),
        ("  name: synthetic", "  name: synthetic\n  root: /data", "data.root", "root: /data", ["takes no root"]),
    ],
)
def test_each_mistake_gives_one_message_with_path_and_line(tmp_path, old, new, path, needle, words):
    assert old in GOOD
    text = GOOD.replace(old, new)
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    err = info.value
    assert err.path == path
    assert err.line == _line_of(text, needle)
    msg = str(err)
    assert msg.startswith(f"{p}:{err.line}: {path}: ")
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_seeds_multiply_the_configurations(tmp_path):
    text = GOOD.replace("  num_samples: 2", "  num_samples: 2\n  seeds: [7, 2, 5]")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.search.seeds == [7, 2, 5]
    # seed by seed, in the listed order; then the 2 sampled trials
    assert cfg.search.configuration_runs() == [(0, 7), (1, 7), (0, 2), (1, 2), (0, 5), (1, 5)]
    assert cfg.search.total_trials() == 2 * 3 + 2
    assert cfg.run_for({"name": "mcce"}, seed=5).train.seed == 5
    assert cfg.run_for({"name": "mcce"}).train.seed == cfg.run.train.seed == 0
    with pytest.raises(TypeError, match="seed must be an int"):
        cfg.run_for({"name": "mcce"}, seed="5")
    # without seeds: one run per configuration, the base train.seed
    plain = load_config(_write(tmp_path, GOOD))
    assert plain.search.configuration_runs() == [(0, None), (1, None)] and plain.search.total_trials() == 4
    # seeds without explicit configurations would do nothing: refused
    text = GOOD.replace("  num_samples: 2", "  num_samples: 2\n  seeds: [0, 1]")
    text = text[: text.index("  configurations:")]
    with pytest.raises(ConfigError, match="no configurations|there are none") as info:
        load_config(_write(tmp_path, text))
    assert info.value.path == "search.seeds"


def test_camvid_study_is_the_seeded_fairness_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("TCE_CAMVID_ROOT", str(tmp_path))
    cfg = load_config(STUDIES / "camvid_fairness.yaml")
    assert cfg.run.data.name == "camvid" and cfg.run.data.options == {"downscale": 2}
    assert cfg.run.data.crop_size == 160 and tuple(cfg.run.data.scale_range) == (0.75, 1.5)
    assert cfg.run.model.backbone == "tiny"
    t = cfg.run.train
    assert (t.num_workers, t.batch_size, t.eval_every, t.cpus_per_worker) == (1, 8, 400, 1)
    assert cfg.resources.max_concurrent_trials == 2
    assert cfg.search.seeds == [0, 1, 2]
    got = [(c.name, c.t, c.tilt_signal) for c in cfg.search.configurations]
    assert got == [
        ("mcce", None, None), ("focal", None, None), ("tce_class", 1.0, None), ("ce_balanced", None, None),
        ("ce_weighted", None, None),
        ("tce_stochastic", 1.0, "batch"), ("tce_stochastic", 1.0, "class"),
        ("tce_stochastic", 1.0, "class"), ("tce_stochastic", 0.1, "class"), ("mcce", None, None),
        ("dice", None, None), ("lovasz", None, None),
    ]
    assert cfg.search.configurations[1].focal_alpha == "inverse_frequency"
    runs = [cfg.run.merged(c.overrides()) for c in cfg.search.configurations]
    assert all(r.loss.gamma == 0.1 for r in runs if r.loss.name == "tce_stochastic")
    paper = runs[5].sampling  # the paper's Algorithm 1: uniform over D_c, random crops
    assert (paper.mode, paper.image_power, paper.class_crop) == ("default", 0.0, False)
    assert [(r.sampling.mode, r.sampling.image_power, r.sampling.class_crop) for r in runs[7:10]] == [
        ("default", 1.0, True), ("default", 1.0, True), ("rare_class", 1.0, True)]
    assert runs[10].loss.ce_weight == 1.0  # Dice + CE
    s = cfg.search
    assert s.num_samples == 6 and s.losses == ["tce_stochastic", "tce_class"]
    assert (s.t.low, s.t.high, s.t.log) == (0.05, 5.0, True)
    assert (s.gamma.low, s.gamma.high) == (0.05, 1.0) and s.tilt_signal == ["batch", "class"]
    assert (s.image_power.low, s.image_power.high) == (0.0, 2.0) and s.class_crop == [False, True]
    assert s.total_trials() == 12 * 3 + 6


def test_missing_name_and_empty_study(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, GOOD.replace("name: t1\n", "")))
    assert info.value.path == "name" and "missing" in str(info.value)
    with pytest.raises(ConfigError, match="empty"):
        load_config(_write(tmp_path, "", "empty.yaml"))
    with pytest.raises(ConfigError, match="YAML syntax") as info:
        load_config(_write(tmp_path, "name: [oops\n", "bad.yaml"))
    with pytest.raises(ConfigError, match="no such study file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no trial"):
        parse_config({"name": "x", "search": {"num_samples": 0}})


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("TCE_T_ROOT", str(tmp_path))
    assert expand_env("${TCE_T_ROOT}/a") == f"{tmp_path}/a"
    monkeypatch.delenv("TCE_T_UNSET", raising=False)
    assert expand_env("${TCE_T_UNSET:-fallback}/x") == "fallback/x"
    monkeypatch.setenv("TCE_T_EMPTY", "")
    assert expand_env("${TCE_T_EMPTY:-d}") == "d"
    text = GOOD.replace("  name: synthetic\n", "  name: camvid\n  root: ${TCE_T_ROOT}\n").replace(
        "  options: {num_images: 8, image_size: [48, 64]}\n", "")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.run.data.root == str(tmp_path)
    # an unset variable without default: named, with the key path and line
    text2 = text.replace("${TCE_T_ROOT}", "${TCE_T_UNSET}")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text2))
    assert info.value.path == "data.root" and info.value.line == _line_of(text2, "root:")
    assert "TCE_T_UNSET is not set" in str(info.value)
    # storage URIs stay as they are
    cfg = parse_config({"name": "u", "storage": "s3://bucket/results", "search": {"num_samples": 1}})
    assert cfg.experiment_path() == "s3://bucket/results/u"


def test_missing_data_root_says_where_data_goes(tmp_path):
    text = GOOD.replace("  name: synthetic\n", "  name: cityscapes\n  root: /no/such/cityscapes\n").replace(
        "  options: {num_images: 8, image_size: [48, 64]}\n", "")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    msg = str(info.value)
    assert info.value.path == "data.root" and info.value.line == _line_of(text, "root:")
    assert "leftImg8bit" in msg and "CITYSCAPES_DATASET" in msg
    assert "python -m tce_ray.study studies/synthetic_fairness.yaml" in msg
    # no root at all
    text = GOOD.replace("  name: synthetic\n", "  name: ade20k\n").replace(
        "  options: {num_images: 8, image_size: [48, 64]}\n", "")
    with pytest.raises(ConfigError, match="needs data.root") as info:
        load_config(_write(tmp_path, text))
    assert info.value.path == "data.root"


def _fake_env(tmp_path: Path) -> dict[str, str]:
    env = {}
    for var in ("CITYSCAPES_DATASET", "ADE20K_ROOT", "TCE_CAMVID_ROOT"):
        d = tmp_path / var.lower()
        d.mkdir(exist_ok=True)
        env[var] = str(d)
    return env


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_validates(path, tmp_path, monkeypatch):
    for k, v in _fake_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.search.total_trials() >= 1
    for i in range(len(cfg.search.configurations)):
        run = cfg.run_for(cfg.search.configurations[i].settings())
        assert run.loss.name == cfg.search.configurations[i].name


def test_shipped_studies_exist():
    names = {p.stem for p in STUDIES.glob("*.yaml")}
    assert {"smoke", "synthetic_fairness", "camvid_fairness", "cityscapes_fairness", "ade20k_fairness"} <= names


def test_cityscapes_study_is_the_papers_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    cfg = load_config(STUDIES / "cityscapes_fairness.yaml")
    assert cfg.run.data.name == "cityscapes" and cfg.run.data.root == str(tmp_path)
    assert cfg.run.model.backbone == "resnet101" and cfg.run.model.backbone_weights == "imagenet"  # as the paper
    assert cfg.run.train.num_workers * cfg.run.train.batch_size == 8 and cfg.run.train.use_gpu
    assert cfg.run.optim.lr == 0.01 and cfg.run.optim.momentum == 0.9
    names = [(c.name, c.t) for c in cfg.search.configurations]
    assert names[:4] == [("mcce", None), ("focal", None), ("tce_stochastic", 0.1), ("tce_stochastic", 1.0)]


def test_cityscapes_study_without_env_var(monkeypatch):
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    with pytest.raises(ConfigError, match="CITYSCAPES_DATASET is not set") as info:
        load_config(STUDIES / "cityscapes_fairness.yaml")
    assert info.value.path == "data.root"


def test_camvid_default_root_form(monkeypatch, tmp_path):
    monkeypatch.delenv("TCE_CAMVID_ROOT", raising=False)
    text = (STUDIES / "camvid_fairness.yaml").read_text()
    assert "${TCE_CAMVID_ROOT:-" in text
    monkeypatch.chdir(tmp_path)  # the default (relative) root does not exist here
    with pytest.raises(ConfigError, match="no camvid data"):
        load_config(STUDIES / "camvid_fairness.yaml")


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tce_ray.study", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=e)


def test_cli_rejects_bad_study_fast_without_traceback(tmp_path):
    text = GOOD.replace("  lr: 0.01", "  lr: -0.5")
    p = _write(tmp_path, text)
    t0 = time.monotonic()
    proc = _cli([str(p), "--storage", str(tmp_path / "res")])
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {p}:{_line_of(text, 'lr:')}: optim.lr: Input should be greater than 0 (got -0.5)"]
    assert elapsed < 15, elapsed  # no Ray start
    assert not (tmp_path / "res").exists()


def test_cli_missing_data_and_help():
    proc = _cli(["studies/cityscapes_fairness.yaml"], env={"CITYSCAPES_DATASET": "/no/such/dir"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no cityscapes data at '/no/such/dir'" in proc.stderr
    assert "studies/synthetic_fairness.yaml" in proc.stderr
    proc = _cli(["--help"])
    assert proc.returncode == 0
    for flag in ("--storage", "--resume", "--address", "--dashboard"):
        assert flag in proc.stdout


def test_validation_does_not_import_ray(tmp_path):
    p = _write(tmp_path, GOOD)
    code = (
        "import sys; from tce_ray.study.config import load_config; load_config(sys.argv[1]); "
        "print('ray' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"  # the registries name classes; nothing is built


def test_yaml_lines_follow_nested_sequences(tmp_path):
    text = GOOD.replace("    - {name: tce_stochastic, t: 0.1}",
                        "    - name: tce_stochastic\n      t: 0.1\n      tilt_signal: clas")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.path == "search.configurations.1.tilt_signal"
    assert info.value.line == _line_of(text, "tilt_signal: clas")
    assert yaml.safe_load(text)  # the file itself is valid YAML


# ----------------------------------------------------------------------------- GPUs shared by trials


def test_gpus_per_worker_fractional_shares_a_gpu():
    from tce_ray.train.runspec import RunSpec
    from tce_ray.train.trainer import worker_resources

    run = RunSpec.model_validate({"train": {"use_gpu": True, "gpus_per_worker": 0.25, "num_workers": 1}})
    assert worker_resources(run) == {"CPU": 1.0, "GPU": 0.25}
    assert worker_resources(RunSpec.model_validate({"train": {"use_gpu": True, "gpus_per_worker": 2}})) == {
        "CPU": 1.0, "GPU": 2.0}
    assert worker_resources(RunSpec()) == {"CPU": 1.0}  # a CPU run asks for no GPU


@pytest.mark.parametrize(
    "train, match",
    [
        ({"gpus_per_worker": 0.5}, "needs use_gpu: true"),
        ({"use_gpu": True, "gpus_per_worker": 1.5}, "whole number"),
        ({"use_gpu": True, "gpus_per_worker": 0}, "greater than 0"),
        ({"use_gpu": True, "gpus_per_worker": True}, "boolean"),
    ],
)
def test_bad_gpus_per_worker_fails_with_its_key(tmp_path, train, match):
    data = {"name": "g", "data": {"name": "synthetic"}, "train": train, "search": {"num_samples": 1}}
    with pytest.raises(ConfigError, match=match) as info:
        parse_config(data)
    assert info.value.path == "train.gpus_per_worker"


def test_cluster_problem_counts_fractional_gpus(monkeypatch):
    import ray

    from tce_ray.train.ray_env import cluster_problem, max_concurrent
    from tce_ray.train.runspec import TrainSpec

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    quarter = TrainSpec(use_gpu=True, gpus_per_worker=0.25, num_workers=1)
    assert cluster_problem(quarter) is None and max_concurrent(quarter, None) == 4
    two = TrainSpec(use_gpu=True, gpus_per_worker=0.75, num_workers=2)
    assert "needs 1.5 GPUs" in cluster_problem(two)
