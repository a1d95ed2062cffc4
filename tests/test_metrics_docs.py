"""The README's table of metrics is the registered metrics, and the Grafana dashboard
queries only series hqm exports (and the ones an operator needs at 3 a.m.)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from hqm.ops.metrics import ProxyMetrics, QueueMetrics, WorkerMetrics, attempt_code
from hqm.ops.metrics_docs import exported_series, families, rewrite

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DASHBOARD = json.loads((ROOT / "k8s" / "grafana-dashboard.json").read_text())


def test_readme_metrics_table_is_the_registry():
    assert "<!-- metrics -->" in README
    assert rewrite(README) == README, "run: python -m hqm.ops.metrics_docs README.md"
    table = README.split("<!-- metrics -->")[1].split("<!-- /metrics -->")[0]
    named = set(re.findall(r"^\| `(hqm_\w+)`", table, re.M))
    expected = {f.series[0] if f.type == "counter" else f.name for f in families()}
    assert named == expected


def test_names_follow_prometheus_conventions():
    for family in families():
        assert family.name.startswith("hqm_") and family.help.endswith((".", ")"))
        assert not family.name.endswith("_total")  # the client library adds it
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), family.name
        assert "id" not in family.labels  # no unbounded label
    names = {f.name for f in families()}
    for name in (
        "hqm_queue_backlog",
        "hqm_queue_pending",
        "hqm_queue_scheduled",
        "hqm_queue_dead_letters",
        "hqm_queue_oldest_age_seconds",
        "hqm_queue_consumers",
        "hqm_queue_results",
        "hqm_worker_attempts",
    ):
        assert name in names


def test_no_created_series_and_bounded_codes():
    registry = CollectorRegistry()
    worker = WorkerMetrics(registry)
    ProxyMetrics(registry).requests.labels("async", "accepted").inc()
    QueueMetrics(registry).backlog.labels("default").set(3)
    worker.attempts.labels("default", attempt_code(503)).inc()
    text = generate_latest(registry).decode()
    assert "_created" not in text
    assert 'hqm_worker_attempts_total{code="503",queue="default"} 1.0' in text
    assert [attempt_code(s) for s in (100, 200, 599, 600, 99, None)] == [
        "100",
        "200",
        "599",
        "error",
        "error",
        "error",
    ]


def _expressions(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            found.append(query["query"])
        return found + [e for value in node.values() for e in _expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in _expressions(value)]
    return []


def test_dashboard_queries_only_exported_series():
    expressions = _expressions(DASHBOARD)
    assert len(expressions) >= 10
    exported = exported_series()
    used: set[str] = set()
    for expr in expressions:
        names = set(re.findall(r"\bhqm_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    for needed in (
        "hqm_queue_backlog",
        "hqm_queue_oldest_age_seconds",
        "hqm_worker_processed_total",
        "hqm_worker_app_seconds_bucket",
        "hqm_worker_attempts_total",
        "hqm_worker_effective_rate",
        "hqm_worker_breaker_state",
        "hqm_queue_consumers",
        "hqm_queue_dead_letters",
    ):
        assert needed in used, needed


def test_dashboard_is_importable_json():
    assert DASHBOARD["uid"] and DASHBOARD["title"]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["refId"] for t in panel["targets"])
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert variables == {"datasource", "queue"}
