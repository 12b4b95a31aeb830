"""Per-version SLIs and the budget a release spent (issue 16 item 6): the arithmetic and the queries asked."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from cqox_platform.canary.policy import POLICY_DIR, load_policy, policy_document
from cqox_platform.canary.store import Rollout
from cqox_platform.metrics.prometheus import PrometheusError
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec
from cqox_platform.slo.versions import VersionSli, VersionWindow, day_breakdown, per_version, splittable

SPEC = load_spec(DEFAULT_SPEC)


def test_budget_consumed_is_bad_events_over_the_periods_budget() -> None:
    # 99.99 %: a period of 1,000,000 requests allows 100 bad ones; a canary with 25 bad spent a quarter.
    row = VersionSli("canary", "availability", bad=25, total=5000, objective=0.9999, period_total=1_000_000)
    assert row.error_ratio == pytest.approx(0.005) and row.budget_consumed == pytest.approx(0.25)
    assert VersionSli("canary", "availability", None, 10, 0.9999, 100).budget_consumed is None
    assert VersionSli("canary", "availability", 0, 0, 0.9999, None).error_ratio is None


def test_each_splittable_slo_is_asked_per_version_over_the_window() -> None:
    asked: list[str] = []

    def query(expr: str, at=None) -> list[dict]:
        asked.append(expr)
        return [{"value": [0, "4" if 'code=~"5.."' in expr else "1000"]}]

    rows = per_version(SPEC, ["canary", "stable"], 1800, query)
    names = [s.name for s in splittable(SPEC)]
    assert [(r.version, r.slo) for r in rows] == [(v, n) for v in ("canary", "stable") for n in names]
    availability = next(r for r in rows if r.version == "canary" and r.slo == "availability")
    assert availability.bad == 4 and availability.total == 1000
    assert any('version="canary"' in q and "[1800s]" in q for q in asked)
    assert any("[30d]" in q and "version=" not in q for q in asked)  # the period's total: the whole service


# --- the per-version view of a day (slo_version_report) -------------------------------------------------------


DAY = datetime(2026, 11, 9, tzinfo=UTC)


def _answers(expr: str, at=None) -> list[dict]:
    """A bad canary (2 % errors) next to a good stable; the service had 1,000,000 requests in the period."""
    if "[30d]" in expr and "version=" not in expr:
        value = 1_000_000
    elif 'version="canary"' in expr:
        value = 80 if 'code=~"5.."' in expr else 4000
    elif 'version="stable"' in expr:
        value = 2 if 'code=~"5.."' in expr else 10_000
    else:
        return []
    return [{"metric": {}, "value": [at or 0, str(value)]}]


def test_a_day_is_broken_down_over_the_part_of_each_window_inside_it() -> None:
    asked: list[tuple[str, float | None]] = []

    def query(expr: str, at=None) -> list[dict]:
        asked.append((expr, at))
        return _answers(expr, at)

    windows = [
        VersionWindow("r1", "canary", "stable", DAY - timedelta(hours=2), DAY + timedelta(hours=1)),  # from yesterday
        VersionWindow("r2", "canary", "stable", DAY + timedelta(hours=5), DAY + timedelta(hours=5, minutes=30)),
        VersionWindow("r0", "canary", "stable", DAY - timedelta(days=2), DAY - timedelta(days=1)),  # another day
    ]
    reports = day_breakdown(SPEC, windows, DAY, DAY + timedelta(days=1), query)
    assert [(r.window.label, r.seconds) for r in reports] == [("r1", 3600), ("r2", 1800)]
    assert any("[3600s]" in q and at == (DAY + timedelta(hours=1)).timestamp() for q, at in asked)
    assert any("[1800s]" in q for q, _ in asked)
    first = reports[0]
    # 80 bad canary requests against a period budget of 1,000,000 x 0.01 % = 100: 80 % of it.
    assert first.consumed("availability") == pytest.approx(0.8)
    assert first.consumed("availability", "stable") == pytest.approx(0.02)
    assert {r.version for r in first.rows} == {"canary", "stable"}


def test_prometheus_failing_leaves_that_window_unknown_and_says_why() -> None:
    def query(expr: str, at=None) -> list[dict]:
        raise PrometheusError("connection refused")

    window = VersionWindow("r1", "canary", "stable", DAY, DAY + timedelta(hours=1))
    (report,) = day_breakdown(SPEC, [window], DAY, DAY + timedelta(days=1), query)
    assert report.rows == () and "connection refused" in report.error
    assert report.consumed("availability") is None


class _Prometheus(PrometheusResource):
    def query(self, expr: str, at=None) -> list[dict]:
        return _answers(expr, at)


class _Postgres:
    @contextlib.contextmanager
    def connect(self, *, autocommit: bool = False):
        yield object()


def _rollout(rollout_id: str, status: str, start: datetime, end: datetime) -> Rollout:
    policy = load_policy(POLICY_DIR / "cqox-engine.yaml")
    return Rollout(
        rollout_id, "cqox-engine", "cqox/engine:bad", "cqox/engine:1", policy.version, 1, 0, 2, 0, status, start, end,
        end, "rollback", "error ratio", policy=policy_document(policy),
    )  # fmt: skip


def test_slo_version_report_states_each_rollouts_burned_budget(monkeypatch) -> None:
    from assets import slo

    rolled_back = _rollout("cqox-engine-bad", "rolled_back", DAY + timedelta(hours=3), DAY + timedelta(hours=4))
    seen = []

    def overlapping(conn, start, end):
        seen.append((start, end))
        return [rolled_back] if start == DAY else []

    monkeypatch.setattr("cqox_platform.canary.release.rollouts_overlapping", overlapping)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [slo.slo_version_report],
            partition_key="2026-11-09",
            resources={"prometheus": _Prometheus(url="http://prometheus.invalid"), "postgres": _Postgres()},
            instance=instance,
        )
    (event,) = result.asset_materializations_for_node("slo_version_report")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert seen == [(DAY, DAY + timedelta(days=1))]
    assert meta["rollouts"] == 1 and meta["max_canary_budget_consumed"] == pytest.approx(0.8)
    spent = meta["canary_budget_consumed"]["cqox-engine-bad on 2026-11-09"]
    assert spent["slo"] == "availability" and spent["status"] == "rolled_back" and spent["window_seconds"] == 3600
    rows = {(r.data["version"], r.data["SLO"]): r.data for r in meta["per_version"].records}
    canary = rows[("canary", "availability")]
    assert (canary["day"], canary["rollout"], canary["window (UTC)"], canary["SLO"]) == (
        "2026-11-09",
        "cqox-engine-bad",
        "03:00-04:00",
        "availability",
    )
    assert canary["SLI (%)"] == pytest.approx(98.0) and canary["budget spent (%)"] == pytest.approx(80.0)
    assert meta["errors"] == []


def test_a_day_without_rollouts_reports_none(monkeypatch) -> None:
    from assets import slo

    monkeypatch.setattr("cqox_platform.canary.release.rollouts_overlapping", lambda conn, start, end: [])
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [slo.slo_version_report],
            partition_key="2026-11-09",
            resources={"prometheus": _Prometheus(url="http://prometheus.invalid"), "postgres": _Postgres()},
            instance=instance,
        )
    (event,) = result.asset_materializations_for_node("slo_version_report")
    assert event.metadata["rollouts"].value == 0 and event.metadata["max_canary_budget_consumed"].value == -1.0
    assert "per_version" not in event.metadata  # no empty table


def test_the_daily_partitions_start_on_the_configured_day() -> None:
    """A fresh installation sets CQOX_SLO_PARTITIONS_START to the day it began serving: no partition before it,
    so the UI does not list hundreds of days that can never have data."""
    import os
    import subprocess
    import sys

    from cqox_platform.settings import DEFAULT_SLO_PARTITIONS_START

    code = "from assets.slo import slo_partitions as p; print(p.start.date(), p.get_first_partition_key())"
    env = {k: v for k, v in os.environ.items() if k != "CQOX_SLO_PARTITIONS_START"}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.split() == [DEFAULT_SLO_PARTITIONS_START.isoformat()] * 2
    env["CQOX_SLO_PARTITIONS_START"] = "2026-12-01"
    configured = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert configured.stdout.split() == ["2026-12-01", "2026-12-01"]
