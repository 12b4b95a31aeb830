"""The SLO spec's validation messages and the error-budget arithmetic."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cqox_platform.errors import SloSpecError
from cqox_platform.slo.budget import budget_minutes, budget_remaining, burn_rate, error_budget
from cqox_platform.slo.rules import PAGE, TICKET, generate_rules
from cqox_platform.slo.spec import (
    DEFAULT_SPEC,
    LatencySlo,
    QuantileSlo,
    RatioSlo,
    ThroughputSlo,
    load_openslo,
    load_spec,
    parse_spec,
)

SPEC = DEFAULT_SPEC


def test_default_spec_has_the_roadmap_slos():
    spec = load_spec(SPEC)
    by_name = {s.name: s for s in spec.slos}
    assert spec.period_days == 30
    assert isinstance(by_name["availability"], RatioSlo) and by_name["availability"].objective == 0.9999
    assert by_name["error-rate"].objective == 0.9999
    latency = {n: (s.objective, s.threshold_seconds) for n, s in by_name.items() if isinstance(s, LatencySlo)}
    assert latency == {"latency-p95": (0.95, 0.5), "latency-p99": (0.99, 1.0)}
    # The median within 100 ms, judged per minute so that its burn-rate alerts can page.
    p50 = by_name["latency-p50"]
    assert isinstance(p50, QuantileSlo) and (p50.quantile, p50.threshold_seconds, p50.objective) == (0.5, 0.1, 0.99)
    throughput = by_name["throughput"]
    assert isinstance(throughput, ThroughputSlo) and (throughput.minimum_rps, throughput.target_rps) == (100, 1000)


def test_roadmap_budget_numbers():
    assert budget_minutes(0.9999, 30) == pytest.approx(4.32)
    assert error_budget(0.9999) == pytest.approx(0.0001)
    assert burn_rate(0.0002, 0.9999) == pytest.approx(2.0)  # the roadmap's 2x alert
    assert budget_remaining(0.00005, 0.9999) == pytest.approx(0.5)
    assert budget_remaining(0.0003, 0.9999) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        error_budget(1.0)


def test_burn_factors_are_the_workbooks_for_30_days_and_scale_with_the_period():
    assert [a.factor(30) for a in PAGE + TICKET] == [14.4, 6.0, 3.0, 1.0]
    assert PAGE[0].factor(28) == pytest.approx(13.44)


def test_queries_treat_missing_bad_series_as_zero_only_on_labelled_traffic_and_need_the_total():
    spec = load_spec(SPEC)
    query = spec.error_ratio_query(spec.slos[0], "5m")
    # Evaluated by promtool in test_slo_quiet_passes.py; here only the shape.
    assert query.startswith("(sum(rate(http_requests_total{") and "or vector(0)" not in query
    assert 'or 0 * sum(rate(http_requests_total{job="cqox-traffic",code!=""}[5m]))' in query
    assert query.endswith('/ sum(rate(http_requests_total{job="cqox-traffic"}[5m]))')
    latency = spec.error_ratio_query(next(s for s in spec.slos if s.name == "latency-p95"), "1h")
    assert 'le="0.5"' in latency and "_count{" in latency


def test_rules_cover_every_budgeted_slo_and_window():
    rules = generate_rules(load_spec(SPEC))
    recording, alerting = rules["groups"]
    assert len(recording["rules"]) == 5 * 7
    assert {r["labels"]["slo"] for r in alerting["rules"]} == {
        "availability",
        "error-rate",
        "latency-p50",
        "latency-p95",
        "latency-p99",
    }
    page = next(
        r for r in alerting["rules"] if r["labels"]["slo"] == "availability" and r["labels"]["severity"] == "page"
    )
    assert "slo:error_ratio:rate1h" in page["expr"] and "> 0.00144" in page["expr"] and page["for"] == "2m"


def _spec_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "slos.yaml"
    path.write_text(textwrap.dedent(body))
    with pytest.raises(SloSpecError) as excinfo:
        load_spec(path)
    return str(excinfo.value)


def test_malformed_spec_names_file_line_and_field(tmp_path):
    message = _spec_error(
        tmp_path,
        """\
        service: cqox
        slos:
          - name: availability
            kind: ratio
            objective: 1.5
    """,
    )
    assert "slos.yaml, line 5, field slos[0].objective" in message
    assert "less than 1" in message


def test_unknown_field_and_kind_are_named(tmp_path):
    message = _spec_error(
        tmp_path,
        """\
        service: cqox
        slos:
          - name: latency
            kind: latency
            objective: 0.9
            threshold_seconds: 0.2
            treshold_ms: 200
          - name: weird
            kind: magic
    """,
    )
    assert "line 7, field slos[0].treshold_ms" in message
    assert "line 8, field slos[1]" in message and "magic" in message


def test_bad_yaml_duplicates_and_empty_files(tmp_path):
    assert "line 3: not valid YAML" in _spec_error(tmp_path, "service: x\nslos: [\n")
    assert "duplicate SLO names: a" in _spec_error(
        tmp_path,
        """\
        service: x
        slos:
          - {name: a, kind: ratio, objective: 0.9}
          - {name: a, kind: ratio, objective: 0.99}
    """,
    )
    assert "empty" in _spec_error(tmp_path, "")
    with pytest.raises(SloSpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SloSpecError, match="line 1, field service"):
        parse_spec("slos: [{name: a, kind: ratio, objective: 0.9}]\n", "inline")


def test_openslo_ratio_slos_are_accepted_and_threshold_refused(tmp_path):
    doc = tmp_path / "openslo.yaml"
    doc.write_text(
        textwrap.dedent("""\
        apiVersion: openslo/v1
        kind: SLO
        metadata: {name: checkout-availability}
        spec:
          description: Checkout requests that succeed
          service: checkout
          indicator:
            metadata: {name: checkout-good}
            spec:
              ratioMetric:
                counter: true
                good:
                  metricSource: {type: Prometheus, spec: {query: 'sum(rate(http_requests_total{code!~"5.."}[5m]))'}}
                total:
                  metricSource: {type: Prometheus, spec: {query: 'sum(rate(http_requests_total[5m]))'}}
          timeWindow: [{duration: 28d, isRolling: true}]
          budgetingMethod: Occurrences
          objectives: [{displayName: good, target: 0.999}]
    """)
    )
    spec = load_openslo(doc, period_days=28)
    (slo,) = spec.slos
    assert slo.name == "checkout-availability" and slo.objective == 0.999
    query = spec.error_ratio_query(slo, "1h")
    assert "[1h]" in query and "[5m]" not in query and query.startswith("((sum(rate(http_requests_total[1h]))) -")

    threshold = tmp_path / "threshold.yaml"
    threshold.write_text(
        textwrap.dedent("""\
        apiVersion: openslo/v1
        kind: SLO
        metadata: {name: queue-latency}
        spec:
          service: estimator
          indicator:
            metadata: {name: queue-p95}
            spec:
              thresholdMetric:
                metricSource:
                  type: Prometheus
                  spec: {query: 'histogram_quantile(0.95, sum by (le) (rate(queue_seconds_bucket[5m])))'}
          timeWindow: [{duration: 30d, isRolling: true}]
          budgetingMethod: Timeslices
          objectives: [{op: lte, value: 2.5, target: 0.99}]
    """)
    )
    spec = load_openslo(threshold)
    (slo,) = spec.slos
    assert slo.kind == "threshold" and (slo.op, slo.value, slo.objective) == ("lte", 2.5, 0.99)
    query = spec.error_ratio_query(slo, "1h")
    assert query.startswith("1 - avg_over_time(((histogram_quantile(0.95") and "<= bool 2.5)[1h:1m])" in query
    threshold.write_text(threshold.read_text().replace("thresholdMetric:", "somethingElse:"))
    with pytest.raises(SloSpecError, match="needs ratioMetric or thresholdMetric"):
        load_openslo(threshold)


def test_chart_is_valid_svg_with_a_line_per_slo_and_target_lines():
    import base64
    import xml.etree.ElementTree as ET
    from datetime import date, timedelta

    from cqox_platform.slo.chart import render_svg, svg_markdown

    history = []
    for i in range(5):
        day = date(2026, 11, 1) + timedelta(days=i)
        history.append(
            {
                "day": day,
                "slo": "availability",
                "kind": "ratio",
                "budget_consumed_30d": 0.1 * i,
                "p50": None,
                "p95": None,
                "p99": None,
            }
        )
        history.append(
            {
                "day": day,
                "slo": "latency-p95",
                "kind": "latency",
                "budget_consumed_30d": 0.05,
                "p50": 0.08,
                "p95": 0.2,
                "p99": 0.9,
            }
        )
    svg = render_svg(history, {"p50": 0.1, "p95": 0.5, "p99": 1.0})
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2 + 3  # two budget lines, three percentiles
    assert "2026-11-01 to 2026-11-05" in svg and "p95 target" in svg
    md = svg_markdown(svg)
    assert base64.b64decode(md.split("base64,", 1)[1].rstrip(")")).decode() == svg
