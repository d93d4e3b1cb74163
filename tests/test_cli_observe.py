"""The CLI conventions of issue 10: --version, --set overrides, --dry-run (no Ray), packaging."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import tce_ray
from tce_ray.cli import main
from tce_ray.study.config import ConfigError, load_config
from tce_ray.study.overrides import apply_overrides, parse_override
from tce_ray.study.plan import TRIAL_STARTUP_SECONDS, format_plan, make_plan

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "studies" / "smoke.yaml")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _run(args: list[str], env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "tce_ray.study", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


# --------------------------------------------------------------------------- packaging


def test_version_has_one_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tce_ray.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", tce_ray.__version__)


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tce-ray {tce_ray.__version__}"


def test_console_scripts_point_at_mains() -> None:
    import importlib

    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"tce-study", "tce-report", "tce-evaluate"}
    for target in scripts.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_license_and_py_typed_ship() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert (ROOT / "tce_ray" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["tce_ray"]


_DIST = {"yaml": "pyyaml", "PIL": "pillow", "annotated_types": "annotated-types"}


def test_every_imported_package_is_declared() -> None:
    """Every third-party top-level module tce_ray imports is a declared dependency."""
    imported: set[str] = set()
    for path in (ROOT / "tce_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("tce_ray", "__future__")}
    declared = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    missing = sorted(m for m in third_party if _DIST.get(m, m).lower() not in declared)
    assert "pandas" in third_party and not missing, f"imported but not declared in pyproject.toml: {missing}"


# --------------------------------------------------------------------------- --set


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("train.steps=5") == ("train.steps", 5)
    assert parse_override("search.seeds=[0, 1]") == ("search.seeds", [0, 1])
    assert parse_override("data.root=/a=b") == ("data.root", "/a=b")
    assert parse_override("optuna_storage=") == ("optuna_storage", None)
    for bad in ("trainsteps", "=5", "train..steps=1"):
        with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
            parse_override(bad)


def test_apply_overrides_nested_and_lists_without_touching_input() -> None:
    data = {"train": {"steps": 4}, "search": {"configurations": [{"name": "mcce"}]}}
    out, given = apply_overrides(data, ["train.steps=9", "search.configurations.0.t=0.5", "scheduler.asha.metric=x"])
    assert out["train"]["steps"] == 9 and out["search"]["configurations"][0] == {"name": "mcce", "t": 0.5}
    assert out["scheduler"] == {"asha": {"metric": "x"}}
    assert data == {"train": {"steps": 4}, "search": {"configurations": [{"name": "mcce"}]}}
    assert set(given) == {"train.steps", "search.configurations.0.t", "scheduler.asha.metric"}
    with pytest.raises(ConfigError, match="not an index") as exc:
        apply_overrides(data, ["search.configurations.3.t=1"])
    assert exc.value.path == "search.configurations.3"
    with pytest.raises(ConfigError, match="inside a int"):
        apply_overrides(data, ["train.steps.x=1"])


def test_set_overrides_are_validated_like_the_file() -> None:
    cfg = load_config(SMOKE, overrides=["train.steps=5", "search.num_samples=3"])
    assert cfg.run.train.steps == 5 and cfg.search.total_trials() == 4
    with pytest.raises(ConfigError) as exc:
        load_config(SMOKE, overrides=["train.stepz=5"])
    assert exc.value.path == "train.stepz" and "did you mean 'steps'" in str(exc.value)
    assert str(exc.value).startswith("--set train.stepz=5: train.stepz: unknown key")
    with pytest.raises(ConfigError, match=r"--set loss.gamma=3: loss.gamma: .*less than or equal to 1"):
        load_config(SMOKE, overrides=["loss.gamma=3"])


def test_bad_set_exits_2_with_the_key_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([SMOKE, "--dry-run", "--set", "train.steps=5", "--set", "train.batchsize=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.batchsize" in err and err.startswith("error: --set train.batchsize=3")


# --------------------------------------------------------------------------- --dry-run


def test_plan_counts_and_estimate_by_hand() -> None:
    cfg = load_config(SMOKE, overrides=["search.seeds=[0, 1, 2]", "search.num_samples=2"])
    plan = make_plan(cfg, step_seconds=0.5)
    assert plan.explicit == [("mcce", 0), ("mcce", 1), ("mcce", 2)] and plan.sampled == 2 and plan.total == 5
    assert plan.cpus_per_trial == 2 and plan.at_once == 1  # resources.max_concurrent_trials: 1
    assert plan.estimate_seconds(4) == pytest.approx(5 * (TRIAL_STARTUP_SECONDS + 4 * 0.5))
    free = load_config(SMOKE, overrides=["resources.max_concurrent_trials=null"])
    p8 = make_plan(free, step_seconds=1.0, cpus=8)
    assert p8.at_once == 4 and p8.estimate_seconds(10) == pytest.approx(1 * (TRIAL_STARTUP_SECONDS + 10))
    text = format_plan(cfg, step_seconds=0.5)
    assert "5 trials" in text and "3 seeds [0, 1, 2]" in text and "2 Ray Train workers x 1 CPU" in text
    unknown = make_plan(load_config(SMOKE, overrides=["model.backbone=resnet18"]))
    assert unknown.step_seconds is None and unknown.estimate_seconds(4) is None


def test_dry_run_cityscapes_is_fast_and_starts_no_ray(tmp_path: Path) -> None:
    """Done-when of issue 10: the paper's study's plan in under 5 s, Ray neither imported nor started."""
    code = (
        "import sys, time; t = time.perf_counter(); from tce_ray.cli import main; "
        "rc = main(['studies/cityscapes_fairness.yaml', '--dry-run', '--no-preflight', '--set', 'train.steps=5']); "
        "print('SECONDS', time.perf_counter() - t); print('RAY', 'ray' in sys.modules); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    out = _run([], env={"CITYSCAPES_DATASET": str(tmp_path)}, code=code)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert "RAY False" in out.stdout
    assert float(re.search(r"SECONDS ([\d.]+)", out.stdout).group(1)) < 5.0, out.stdout
    assert wall < 20  # interpreter start included, on a loaded 2-core machine
    assert "study cityscapes_fairness: 12 trials" in out.stdout
    assert "4 configurations x train.seed 0 = 4 trials" in out.stdout
    assert "8 trials by tpe_scaled" in out.stdout and "4 Ray Train workers x 4 CPU = 16 CPUs + 4 GPUs" in out.stdout
    assert "5 steps" in out.stdout and "nothing was started" in out.stdout


def test_dry_run_of_an_invalid_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(SMOKE).read_text().replace("steps: 4", "steps: -4"))
    out = _run([str(bad), "--dry-run"])
    assert out.returncode == 2 and "train.steps" in out.stderr and "study smoke" not in out.stdout
