"""The shipped Grafana dashboards, Prometheus config and provisioning files are well formed.

tests/e2e/test_observability.py evaluates every query against a real Prometheus; this file checks
what can be checked without one: JSON, unique panel ids, the templated datasource, and that each
metric a query names is one runtap exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from proxy.app import PARTS, make_app
from proxy.config import Settings

DASHBOARDS = Path(__file__).parents[1] / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BOARDS = sorted(DASHBOARDS.glob("*.json"))
METRIC = re.compile(r"\b((?:runtap|gen_ai)_[a-z_]+)\b")
LABELS = re.compile(r"\b(?:by|without) \([^)]*\)|\{[^}]*\}")
"""Grouping clauses and label matchers: what is left names only metrics."""


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", ()))
    return out


def queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(board) for target in panel.get("targets", ())]


def test_there_are_an_overview_a_runs_and_a_responses_dashboard():
    assert {p.name for p in BOARDS} == {"overview.json", "responses.json", "runs.json"}


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_with_unique_panel_ids_and_the_datasource_variable(path: Path):
    board = json.loads(path.read_text())
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def _exported_names(tmp_path: Path) -> set[str]:
    settings = Settings.model_validate({"recorder": {"db": str(tmp_path / "r.duckdb")}})
    registry = make_app(settings)[PARTS].registry
    assert registry is not None
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_queries_name_only_metrics_runtap_exports(tmp_path):
    exported = _exported_names(tmp_path)
    for path in BOARDS:
        for expr in queries(json.loads(path.read_text())):
            for name in METRIC.findall(LABELS.sub("", expr)):
                assert name in exported, f"{path.name}: {name} in {expr!r}"


def test_the_overview_covers_the_issue():
    exprs = " ".join(queries(json.loads((DASHBOARDS / "overview.json").read_text())))
    for name in ("runtap_requests_total", "runtap_tokens_total", "runtap_runs_total",
                 "runtap_time_to_first_event_seconds_bucket", "runtap_added_latency_seconds_bucket"):
        assert name in exprs
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(runtap_added_latency_seconds_bucket" in exprs


def test_the_runs_dashboard_covers_the_issue():
    exprs = " ".join(queries(json.loads((DASHBOARDS / "runs.json").read_text())))
    for name in ("runtap_run_steps_total", "runtap_tool_calls_total", "runtap_tool_call_client_seconds_bucket",
                 "runtap_run_end_reasons_total", "runtap_recorder_queue_depth", "runtap_recorder_spilled_rows_total",
                 "runtap_observer_errors_total"):
        assert name in exprs


def test_prometheus_config_and_grafana_provisioning():
    prometheus = (DASHBOARDS / "prometheus.yml").read_text()
    assert '"127.0.0.1:9464"' in prometheus and "metrics_path: /metrics" in prometheus
    datasource = (DASHBOARDS / "provisioning" / "datasources" / "runtap.yaml").read_text()
    assert "type: prometheus" in datasource and "url: http://127.0.0.1:9090" in datasource
    provider = (DASHBOARDS / "provisioning" / "dashboards" / "runtap.yaml").read_text()
    assert "type: file" in provider and "path: $RUNTAP_DASHBOARDS" in provider
