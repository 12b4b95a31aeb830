"""slo_report against the stack's real Prometheus, backfilled with history whose true values are known."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from unittest import mock

import dagster as dg
import psycopg
import pytest
import yaml

from assets import slo as slo_assets
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.schema import MigrationRunner
from cqox_platform.slo.backfill import backfill, wait_for_series
from cqox_platform.slo.spec import DEFAULT_SPEC, parse_spec
from cqox_platform.slo.traffic import Segment, Totals, VersionTraffic, history_openmetrics
from tests.helpers import postgres_admin

SPEC = DEFAULT_SPEC
TODAY = datetime.now(UTC).date()
D1, D2, D3, D4, D5 = (TODAY - timedelta(days=n) for n in (7, 6, 5, 4, 3))
NORMAL = VersionTraffic(rps=100.0, error_ratio=0.00005, latency_median_s=0.05, latency_sigma=0.5)
OUTAGE = VersionTraffic(rps=100.0, error_ratio=1.0, latency_median_s=0.05, latency_sigma=0.5)
TRICKLE = VersionTraffic(rps=0.005, error_ratio=0.0, latency_median_s=0.05, latency_sigma=0.5)


def _ts(d: date, hours: float = 0) -> float:
    return datetime.combine(d, time(), UTC).timestamp() + hours * 3600


SEGMENTS = [
    Segment(_ts(D1), _ts(D2), {"stable": NORMAL}),
    Segment(_ts(D2), _ts(D2, 1), {"stable": OUTAGE}),  # a one-hour outage
    Segment(_ts(D2, 1), _ts(D3), {"stable": NORMAL}),
    Segment(_ts(D3), _ts(D4), {"stable": TRICKLE}),  # low traffic; D4 has no series at all
    Segment(_ts(D5), _ts(D5, 12), {"stable": NORMAL}),
    Segment(_ts(D5, 12), _ts(D5, 24), {"stable": NORMAL}, reset=True),  # the exporter restarts at noon
]


def _truth(segments: list[Segment]) -> tuple[float, float]:
    totals = Totals()
    for s in segments:
        totals.advance(s.versions["stable"], s.end - s.start)
    return totals.requests, totals.errors


@pytest.fixture(scope="module")
def history(stack):
    job = f"slo-test-{uuid.uuid4().hex[:8]}"
    data = stack.service("prometheus").home / "data"
    text = history_openmetrics(SEGMENTS, {"job": job})
    expected = sum(1 for line in text.splitlines() if line.startswith("http_requests_total{"))
    backfill(text, data)
    prometheus = PrometheusResource(
        url=stack.env()["CQOX_PROMETHEUS_URL"], rules_dir=stack.env()["CQOX_PROMETHEUS_RULES_DIR"]
    )
    # promtool writes one block per 2 h and Prometheus loads blocks as they appear: wait for every sample, not the
    # first (a query between two block loads saw a quarter of the history).
    samples = f'sum(count_over_time(http_requests_total{{job="{job}"}}[10d]))'

    def loaded() -> bool:
        result = prometheus.query(samples)
        return bool(result) and int(float(result[0]["value"][1])) >= expected

    wait_for_series(loaded)
    raw = yaml.safe_load(SPEC.read_text())
    raw["selector"] = {"job": job}
    spec_path = Path(stack.config.root) / f"{job}.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    with postgres_admin(stack).connect(autocommit=True) as conn:
        MigrationRunner().migrate(conn)
    return {"job": job, "spec": parse_spec(yaml.safe_dump(raw)), "spec_path": str(spec_path), "prometheus": prometheus}


def _materialize(stack, history, first: date, last: date) -> dg.ExecuteInProcessResult:
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    # The spec comes from the one SLO spec setting, as for the rules, the sensor and the canary gate.
    with mock.patch.dict(os.environ, {"CQOX_SLO_SPEC": history["spec_path"]}):
        return dg.materialize(
            [slo_assets.slo_report],
            tags=tags,
            raise_on_error=False,
            resources={"prometheus": history["prometheus"], "postgres": postgres_admin(stack)},
        )


def _rows(stack, history) -> dict[tuple[date, str], dict]:
    with psycopg.connect(**postgres_admin(stack).conninfo()) as conn:
        cur = conn.execute("SELECT * FROM slo_reports WHERE service = %s", (history["spec"].service,))
        names = [c.name for c in cur.description]
        return {(r[0], r[2]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def test_backfilled_range_matches_the_generators_truth(stack, history):
    result = _materialize(stack, history, D1, D4)
    events = result.asset_materializations_for_node("slo_report")
    assert sorted(e.partition for e in events) == [d.isoformat() for d in (D1, D2, D3, D4)]  # one run, 4 partitions
    meta = {k: v.value for k, v in events[-1].metadata.items()}
    assert meta["days"] == 4
    assert "data:image/svg+xml;base64," in meta["chart"]
    rows = _rows(stack, history)
    budget = 0.0001

    d1_total, d1_bad = _truth([SEGMENTS[0]])
    r = rows[(D1, "availability")]
    assert r["status"] == "ok"
    assert r["events"] == pytest.approx(d1_total, rel=1e-6)
    assert r["sli"] == pytest.approx(1 - d1_bad / d1_total, abs=2e-6)
    assert r["burn_rates"]["1d"] == pytest.approx((d1_bad / d1_total) / budget, rel=0.02)

    # The one-hour outage: 360,000 failed requests on top of the normal error rate.
    d2_total, d2_bad = _truth(SEGMENTS[1:3])
    r = rows[(D2, "availability")]
    assert r["status"] == "violated"
    assert r["bad_events"] == pytest.approx(d2_bad, rel=1e-4)
    assert r["sli"] == pytest.approx(1 - d2_bad / d2_total, abs=1e-5)
    expected_30d = (d1_bad + d2_bad) / (d1_total + d2_total) / budget
    assert r["budget_consumed_30d"] == pytest.approx(expected_30d, rel=1e-3)
    assert r["budget_consumed_30d"] > 1  # an hour down blows a 4.32-minute budget many times over

    # Latency percentiles from the histogram, within its bucket resolution.
    p95 = rows[(D1, "latency-p95")]
    assert 0.1 < NORMAL.quantile(0.95) <= 0.25 and 0.1 < p95["latency_p95"] <= 0.25
    assert 0.025 < rows[(D1, "latency-p50")]["latency_p50"] <= 0.05 + 1e-9

    # Low traffic is its own state, never a perfect day; a missing series is "no data".
    assert rows[(D3, "availability")]["status"] == "insufficient_events"
    assert rows[(D3, "availability")]["sli"] is None
    assert rows[(D4, "availability")]["status"] == "no_data"
    assert rows[(D4, "throughput")]["status"] == "no_data"
    assert rows[(D1, "throughput")]["throughput_mean"] == pytest.approx(100.0, rel=1e-6)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"slo_data_present": False}


def test_counter_reset_mid_day_is_not_lost_traffic(stack, history):
    _materialize(stack, history, D5, D5)
    d5_total, d5_bad = _truth(SEGMENTS[4:6])
    r = _rows(stack, history)[(D5, "availability")]
    assert r["status"] == "ok"
    assert r["events"] == pytest.approx(d5_total, rel=2e-3)  # increase() treats the drop as a reset
    assert r["sli"] == pytest.approx(1 - d5_bad / d5_total, abs=2e-6)


def test_a_clean_day_passes_the_data_check_and_reruns_are_idempotent(stack, history):
    first = _materialize(stack, history, D1, D1)
    assert {e.check_name: e.passed for e in first.get_asset_check_evaluations()} == {"slo_data_present": True}
    before = _rows(stack, history)[(D1, "availability")]
    _materialize(stack, history, D1, D1)
    after = _rows(stack, history)[(D1, "availability")]
    assert after["sli"] == before["sli"] and after["computed_at"] >= before["computed_at"]
    with psycopg.connect(**postgres_admin(stack).conninfo()) as conn:
        count = conn.execute(
            "SELECT count(*) FROM slo_reports WHERE service = %s AND day = %s", (history["spec"].service, D1)
        ).fetchone()[0]
    assert count == len(history["spec"].slos)


def test_cli_backfill_is_idempotent(stack):
    import os
    import subprocess
    import sys

    env = {**os.environ, **stack.env()}
    argv = [sys.executable, "-m", "cqox_platform.cli", "slo", "backfill", "--days", "2"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stderr
    assert "backfilled 2 day(s)" in first.stdout
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "nothing to do" in second.stdout
