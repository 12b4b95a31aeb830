"""Daily SLO reports from Prometheus: a handful of range queries for any number of days.

Every quantity is one ``query_range`` with a one-day step evaluated at each day's end (00:00 UTC of the next
day), so a 30-day backfill costs the same number of queries as a single day. ``increase`` handles counter
resets. A day whose total series is absent is ``no_data`` (never counted as good); a day with fewer events than
``min_events`` is ``insufficient_events`` (never 100 %).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cqox_platform.slo.budget import error_budget
from cqox_platform.slo.rules import WINDOWS
from cqox_platform.slo.spec import LatencySlo, QuantileSlo, RatioSlo, SloSpec, ThresholdSlo, ThroughputSlo

QueryRange = Callable[[str, datetime, datetime, str], list[dict[str, Any]]]
QUANTILES = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}


@dataclass
class SloDay:
    day: date
    service: str
    slo: str
    kind: str
    status: str
    objective: float | None = None
    events: float | None = None
    bad_events: float | None = None
    sli: float | None = None
    error_ratio: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    throughput_mean: float | None = None
    throughput_peak: float | None = None
    budget_consumed_30d: float | None = None
    budget_consumed_month: float | None = None
    burn_rates: dict[str, float | None] = field(default_factory=dict)


def _day_end(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(), UTC)


class _Series:
    """One range query's single series as {day: value}; NaN/Inf and missing points become absent."""

    def __init__(self, result: list[dict[str, Any]]) -> None:
        self.values: dict[date, float] = {}
        if result:
            for ts, raw in result[0].get("values", []):
                value = float(raw)
                if math.isfinite(value):
                    self.values[(datetime.fromtimestamp(float(ts), UTC) - timedelta(days=1)).date()] = value

    def get(self, day: date) -> float | None:
        return self.values.get(day)


@dataclass
class ReportRun:
    days: list[SloDay]
    queries: int


def compute_reports(
    spec: SloSpec, query_range: QueryRange, start: date, end: date, *, min_events: float = 1000.0
) -> ReportRun:
    """Reports for every day in [start, end] and every SLO of ``spec``."""
    month_start = start.replace(day=1)
    queries = 0

    def q(expr: str, first: date = start) -> _Series:
        nonlocal queries
        queries += 1
        return _Series(query_range(expr, _day_end(first), _day_end(end), "1d"))

    m = spec.metrics
    sel = spec.matchers()
    total_query = spec.throughput_query("1d", fn="increase")
    total = q(total_query, month_start)
    peak = q(f"max_over_time({spec.throughput_query('5m')}[1d:1m])")
    quantiles = {
        name: q(f"histogram_quantile({value}, sum by (le) (increase({m.duration_seconds}_bucket{sel}[1d])))")
        for name, value in QUANTILES.items()
    }
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    out: list[SloDay] = []
    for slo in spec.slos:
        if isinstance(slo, ThroughputSlo):
            for d in days:
                events = total.get(d)
                mean = events / 86400 if events is not None else None
                status = "no_data" if mean is None else ("ok" if mean >= slo.minimum_rps else "violated")
                out.append(
                    SloDay(
                        d,
                        spec.service,
                        slo.name,
                        slo.kind,
                        status,
                        events=events,
                        throughput_mean=mean,
                        throughput_peak=peak.get(d),
                    )
                )
            continue
        budget = error_budget(slo.objective)
        if isinstance(slo, ThresholdSlo | QuantileSlo) or (isinstance(slo, RatioSlo) and slo.bad_query):
            # Time slices and opaque queries: no bad-event counts, the status from the ratio alone.
            events_s, bad_s = total, None
        else:
            bad_query, events_query = spec.event_queries(slo, "1d", fn="increase")
            events_s = total if events_query == total_query else q(events_query, month_start)
            bad_s = q(bad_query, month_start)
        ratio_1d = q(spec.error_ratio_query(slo, "1d"))
        ratio_period = q(spec.error_ratio_query(slo, f"{spec.period_days}d"))
        burns = {w: q(spec.error_ratio_query(slo, w)) for w in WINDOWS}
        for d in days:
            events = events_s.get(d)
            bad = bad_s.get(d) if bad_s is not None else None
            error_ratio = ratio_1d.get(d)
            row = SloDay(
                d,
                spec.service,
                slo.name,
                slo.kind,
                "ok",
                objective=slo.objective,
                events=events,
                bad_events=bad,
                error_ratio=error_ratio,
            )
            if isinstance(slo, LatencySlo | QuantileSlo):
                for name, series in quantiles.items():
                    setattr(row, name, series.get(d))
            if error_ratio is None or (bad_s is not None and events is None):
                row.status = "no_data"
            elif events is not None and events < min_events:
                row.status = "insufficient_events"
            else:
                row.sli = 1 - error_ratio
                row.status = "ok" if row.sli >= slo.objective else "violated"
            period_ratio = ratio_period.get(d)
            row.budget_consumed_30d = period_ratio / budget if period_ratio is not None else None
            mtd = [x for x in (month_start + timedelta(days=i) for i in range(d.day)) if x <= d]
            mtd_events = sum(events_s.get(x) or 0 for x in mtd)
            mtd_bad = sum((bad_s.get(x) or 0) for x in mtd) if bad_s is not None else None
            if mtd_bad is not None and mtd_events > 0:
                row.budget_consumed_month = mtd_bad / mtd_events / budget
            row.burn_rates = {w: (s.get(d) / budget if s.get(d) is not None else None) for w, s in burns.items()}
            out.append(row)
    return ReportRun(out, queries)


_COLUMNS = (
    "day",
    "service",
    "slo",
    "kind",
    "status",
    "objective",
    "events",
    "bad_events",
    "sli",
    "error_ratio",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "throughput_mean",
    "throughput_peak",
    "budget_consumed_30d",
    "budget_consumed_month",
    "burn_rates",
)


def store_reports(conn: psycopg.Connection, rows: list[SloDay]) -> int:
    """Upsert by (day, service, slo): recomputing a day replaces it, so backfills are idempotent."""
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[3:]) + ", computed_at = now()"
    with conn.transaction():
        for r in rows:
            values = [getattr(r, c) for c in _COLUMNS]
            values[-1] = Jsonb(r.burn_rates)
            conn.execute(
                f"INSERT INTO slo_reports ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
                f"ON CONFLICT (day, service, slo) DO UPDATE SET {updates}",
                values,
            )
    return len(rows)


def history(conn: psycopg.Connection, service: str, until: date, days: int = 30) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT day, slo, kind, status, objective, sli, budget_consumed_30d, latency_p50, latency_p95, latency_p99 "
        "FROM slo_reports WHERE service = %s AND day > %s AND day <= %s ORDER BY day, slo",
        (service, until - timedelta(days=days), until),
    ).fetchall()
    keys = ("day", "slo", "kind", "status", "objective", "sli", "budget_consumed_30d", "p50", "p95", "p99")
    return [dict(zip(keys, r, strict=True)) for r in rows]
