"""The shipped Grafana dashboard reads the gauges tce_ray.train.live_metrics exports, by their
exported names and tags; docs/monitoring.md's steps name them too."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tce_ray.train.live_metrics import GAUGE_SPECS

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "tce_dashboard.json"


def _exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p["targets"]]


def test_dashboard_charts_every_gauge_with_its_tags() -> None:
    exprs = _exprs()
    exported = {f"ray_{name}": set(tags) for name, _, tags in GAUGE_SPECS.values()}
    charted = set()
    for e in exprs:
        for metric, labels in re.findall(r"(ray_tce_\w+)\{([^}]*)\}", e):
            assert metric in exported, f"{metric} is not a gauge of live_metrics: {sorted(exported)}"
            used = {m.group(1) for m in re.finditer(r"(\w+)\s*=~?", labels)}
            assert used <= exported[metric], (metric, used)
            charted.add(metric)
        for by in re.findall(r"by \(([^)]*)\)\s*\((ray_tce_\w+)", e):
            assert {x.strip() for x in by[0].split(",")} <= exported[by[1]], e
    assert charted == set(exported), f"not charted: {sorted(set(exported) - charted)}"


def test_dashboard_run_variable_and_datasource() -> None:
    d = json.loads(DASHBOARD.read_text())
    names = {v["name"]: v for v in d["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    assert "ray_tce_step" in names["run"]["definition"]
    assert all('run=~"$run"' in e for e in _exprs())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_readme_monitoring_steps_name_the_gauges_and_files() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    section = text.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    for name, _, _ in GAUGE_SPECS.values():
        assert f"ray_{name}" in section
    for needle in ("ray metrics launch-prometheus", "docs/grafana/tce_dashboard.json", "tensorboard --logdir",
                   "optuna-dashboard"):
        assert needle in text, needle
