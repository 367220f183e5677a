"""docs/grafana/rayqueue.json is a valid dashboard whose queries name only metrics rayqueue exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def exported_names() -> set[str]:
    """Prometheus names of the metrics in rayqueue/actors/ray_metrics.py (Ray prefixes ray_)."""
    source = (ROOT / "rayqueue" / "actors" / "ray_metrics.py").read_text()
    counters = {f"ray_rayqueue_{name}_total" for name in re.findall(r'counter\("(\w+)"', source)}
    gauges = {f"ray_rayqueue_{name}" for name in re.findall(r'gauge\("(\w+)"', source)}
    histograms = {
        f"ray_{name}_{suffix}"
        for name in re.findall(r'Histogram\(\s*"(\w+)"', source)
        for suffix in ("bucket", "count", "sum")
    }
    return counters | gauges | histograms


def test_every_panel_queries_an_exported_metric_by_queue():
    dashboard = json.loads((ROOT / "docs" / "grafana" / "rayqueue.json").read_text())
    assert dashboard["uid"] == "rayqueue" and dashboard["panels"]
    exported = exported_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bray_rayqueue_\w+", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)
            assert 'queue=~"$queue"' in target["expr"]
            used |= names
    # every counter and gauge has a panel
    assert {name for name in exported if not name.startswith("ray_rayqueue_storage_write")} <= used | {
        name for name in exported if name.endswith(("_count", "_sum"))
    }
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "queue"}
