"""SLO report cost: range queries (what slo_report does) against one query per metric per hour, in one run.

Backfills 30 days of one-minute synthetic history into the stack's Prometheus under a fresh job label, then
computes the same daily numbers for three SLOs (availability, error rate, latency p95) both ways and prints the
number of queries, wall time, their ratios, and the largest difference between the two answers.

    eval "$(cqox-platform stack env)" && python -m benchmarks.slo_report [--days 30]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import yaml

from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.slo.backfill import backfill, wait_for_series
from cqox_platform.slo.report import compute_reports
from cqox_platform.slo.spec import DEFAULT_SPEC, LatencySlo, RatioSlo, parse_spec
from cqox_platform.slo.traffic import Segment, VersionTraffic, history_openmetrics

SPEC = DEFAULT_SPEC


def naive(prometheus: PrometheusResource, spec, days: list[date]) -> tuple[dict, int]:
    """One instant query per metric per hour, summed into days: the cron-script way."""
    m, sel = spec.metrics, spec.matchers()
    metrics = {"total": f"{m.requests_total}{sel}", "count": f"{m.duration_seconds}_count{sel}"}
    for slo in spec.budgeted:
        if isinstance(slo, RatioSlo):
            metrics[slo.name] = (
                f"{m.requests_total}{spec.matchers(f'{m.code_label}=~{chr(34)}{slo.bad_codes}{chr(34)}')}"
            )
        elif isinstance(slo, LatencySlo):
            metrics[slo.name] = (
                f"{m.duration_seconds}_bucket{spec.matchers(f'le={chr(34)}{slo.threshold_seconds!r}{chr(34)}')}"
            )
    queries, sums = 0, {}
    for d in days:
        for hour in range(24):
            at = datetime.combine(d, datetime.min.time(), UTC) + timedelta(hours=hour + 1)
            for name, selector in metrics.items():
                result = prometheus.query(f"sum(increase({selector}[1h]))", at=at.timestamp())
                queries += 1
                value = float(result[0]["value"][1]) if result else 0.0
                sums[(d, name)] = sums.get((d, name), 0.0) + value
    answers = {}
    for d in days:
        for slo in spec.budgeted:
            if isinstance(slo, RatioSlo):
                total, bad = sums[(d, "total")], sums[(d, slo.name)]
            else:
                total = sums[(d, "count")]
                bad = total - sums[(d, slo.name)]
            answers[(d, slo.name)] = 1 - bad / total if total else None
    return answers, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    prometheus = PrometheusResource(url=os.environ["CQOX_PROMETHEUS_URL"])
    data_dir = Path(os.environ["CQOX_STACK_DIR"]) / "prometheus" / "data"
    job = f"bench-{uuid.uuid4().hex[:8]}"
    last = datetime.now(UTC).date() - timedelta(days=2)
    first = last - timedelta(days=args.days - 1)
    start = datetime.combine(first, datetime.min.time(), UTC).timestamp()
    segments = [
        Segment(
            start + day * 86400,
            start + (day + 1) * 86400,
            {"stable": VersionTraffic(rps=150, error_ratio=0.00002 * (1 + day % 7))},
        )
        for day in range(args.days)
    ]
    print(f"generating {args.days} days of one-minute history for job {job} ...", flush=True)
    started = time.perf_counter()
    text = history_openmetrics(segments, {"job": job})
    print(
        f"  {len(text) / 2**20:.0f} MiB of OpenMetrics in {time.perf_counter() - started:.0f} s; backfilling ...",
        flush=True,
    )
    backfill(text, data_dir)
    wait_for_series(
        lambda: bool(prometheus.query(f'count(count_over_time(http_requests_total{{job="{job}"}}[40d]))')), timeout=240
    )
    raw = yaml.safe_load(SPEC.read_text())
    raw["selector"] = {"job": job}
    raw["slos"] = [s for s in raw["slos"] if s["name"] in ("availability", "error-rate", "latency-p95")]
    spec = parse_spec(yaml.safe_dump(raw))
    days = [first + timedelta(days=i) for i in range(args.days)]

    started = time.perf_counter()
    naive_answers, naive_queries = naive(prometheus, spec, days)
    naive_s = time.perf_counter() - started
    started = time.perf_counter()
    run = compute_reports(spec, prometheus.query_range, first, last)
    ours_s = time.perf_counter() - started
    ours = {(r.day, r.slo): r.sli for r in run.days if r.slo in {s.name for s in spec.budgeted}}
    worst = max(abs((ours[k] or 0) - (v or 0)) for k, v in naive_answers.items())
    print(f"naive (one query per metric per hour): {naive_queries} queries, {naive_s:.1f} s   (anchor)")
    print(f"slo_report (range queries):           {run.queries} queries, {ours_s:.2f} s")
    print(
        f"ratio: {naive_queries / run.queries:.0f}x fewer queries, {naive_s / ours_s:.0f}x faster; "
        f"largest SLI difference between the two: {worst:.2e}"
    )
    print("note: slo_report also computes burn rates, budgets and percentiles the naive loop does not")


if __name__ == "__main__":
    main()
