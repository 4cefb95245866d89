"""Prometheus scrapes the right targets, and the Grafana dashboard asks only for the contract's metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sessionpulse.json"

# The metrics contract of issue 7: name -> (type, labels).
METRICS: dict[str, tuple[str, set[str]]] = {
    "sessionpulse_events_total": ("counter", {"topic", "outcome"}),
    "sessionpulse_batch_size": ("histogram", set()),
    "sessionpulse_batch_seconds": ("histogram", set()),
    "sessionpulse_consumer_lag": ("gauge", {"topic", "partition"}),
    "sessionpulse_outbox_depth": ("gauge", {"outbox"}),
    "sessionpulse_published_total": ("counter", {"channel"}),
    "sessionpulse_redis_script_seconds": ("histogram", {"script"}),
    "sessionpulse_live_sessions": ("gauge", {"kind"}),
    "sessionpulse_webhooks_total": ("counter", {"provider", "status"}),
    "sessionpulse_http_requests_total": ("counter", {"route", "status"}),
}
LABEL_VALUES = {
    "outcome": {"consumed", "applied", "duplicate", "dead_lettered", "late_after_end", "no_state"},
    "outbox": {"rtk", "streams"},
    "channel": {"summary", "transcript"},
    "kind": {"rtk", "streams"},
}
TARGET_LABELS = {"job", "instance"}
PROMQL_FUNCTIONS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "topk",
    "bottomk",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "abs",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "sum_over_time",
    "vector",
    "scalar",
    "absent",
}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
}


def _series() -> dict[str, set[str]]:
    """Every series name a query may use, with the labels it carries."""
    series = {}
    for name, (kind, labels) in METRICS.items():
        if kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return panels


def _targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _panels():
        for target in panel.get("targets", []):
            yield panel["title"], target


def _parse(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str]]:
    """The selectors of a PromQL expression (metric, [(label, op, value)]) and its grouping labels."""
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations, $__rate_interval included
    grouping: set[str] = set()
    for labels in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    selectors = []
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, matchers, call = match.groups()
        if call:
            assert name in PROMQL_FUNCTIONS, f"unexpected function {name} in {expr}"
            continue
        if name in PROMQL_KEYWORDS:
            continue
        pairs = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers or "")
        selectors.append((name, pairs))
    return selectors, grouping


def test_parser_sees_what_a_query_asks_for() -> None:
    selectors, grouping = _parse(
        'histogram_quantile(0.99, sum by (le, script) (rate(sessionpulse_redis_script_seconds_bucket{script="x"}[5m])))'
    )
    assert selectors == [("sessionpulse_redis_script_seconds_bucket", [("script", "=", "x")])]
    assert grouping == {"le", "script"}


def test_dashboard_queries_use_only_the_contract_metrics_and_labels() -> None:
    series = _series()
    used: set[str] = set()
    for title, target in _targets():
        expr = target["expr"]
        selectors, grouping = _parse(expr)
        assert selectors, (title, expr)
        labels: set[str] = set(TARGET_LABELS)
        for name, matchers in selectors:
            assert name in series, f"panel {title!r} asks for {name}, which is not in the metrics contract"
            used.add(name)
            labels |= series[name]
            for label, op, value in matchers:
                assert label in series[name] | TARGET_LABELS, (title, name, label)
                if label in LABEL_VALUES and op == "=":
                    assert value in LABEL_VALUES[label], (title, label, value)
        assert grouping <= labels, (title, grouping - labels)
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend_labels <= grouping, (
            title,
            "legend names a label the query drops",
            legend_labels - grouping,
        )
    base = {re.sub(r"_(bucket|sum|count)$", "", n) if n not in METRICS else n for n in used}
    assert base == set(METRICS), f"metrics no panel shows: {set(METRICS) - base}"


def test_dashboard_has_the_panels_issue_7_asks_for() -> None:
    wanted = {
        "events/s by outcome": ("sessionpulse_events_total", "outcome"),
        "consumer lag": ("sessionpulse_consumer_lag", None),
        "batch latency": ("sessionpulse_batch_seconds_bucket", None),
        "dead letters/s": ("sessionpulse_events_total", "dead_lettered"),
        "live sessions": ("sessionpulse_live_sessions", None),
        "outbox depth": ("sessionpulse_outbox_depth", None),
        "webhooks by status": ("sessionpulse_webhooks_total", "status"),
        "redis script latency": ("sessionpulse_redis_script_seconds_bucket", None),
    }
    exprs = [target["expr"] for _title, target in _targets()]
    for what, (metric, word) in wanted.items():
        assert any(metric in e and (word is None or word in e) for e in exprs), what
    latency = [e for e in exprs if "sessionpulse_batch_seconds_bucket" in e]
    assert any("histogram_quantile(0.5," in e for e in latency) and any(
        "histogram_quantile(0.99," in e for e in latency
    )


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_prometheus_scrapes_both_workers_and_the_api() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: {t for sc in job.get("static_configs", []) for t in sc["targets"]} for name, job in jobs.items()
    }
    workers = {name: svc for name, svc in compose.items() if name.startswith("worker")}
    assert targets["sessionpulse-worker"] == {
        f"{name}:{svc['environment']['METRICS_PORT']}" for name, svc in workers.items()
    }
    assert targets["sessionpulse-worker"] == {"worker-1:9464", "worker-2:9464"}
    assert (
        targets["sessionpulse-api"] == {f"api:{compose['api']['environment']['HTTP_PORT']}"} == {"api:8000"}
    )
    for name in ("sessionpulse-worker", "sessionpulse-api"):
        assert jobs[name].get("metrics_path", "/metrics") == "/metrics"
    mounts = compose["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"] if v.startswith("./"))
    provisioning = DEPLOY / "grafana" / "provisioning"
    for folder in ("datasources", "dashboards"):
        assert mounts[f"./deploy/grafana/provisioning/{folder}"] == f"/etc/grafana/provisioning/{folder}"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "sessionpulse.yml").read_text())["providers"]
    assert provider["type"] == "file"
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_the_service_defines_the_contract_metrics() -> None:
    """The names the dashboard uses are the ones service/metrics.py exports."""
    pytest.importorskip("prometheus_client")
    from service import metrics
    from service.stats import Stats

    families = {f.name: f.type for f in metrics.REGISTRY.collect()}
    families |= {f.name: f.type for f in metrics.StatsCollector(Stats()).collect()}
    for name, (kind, _labels) in METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert families.get(family) == kind, (name, families.get(family))
