"""`cqox-platform slo backfill`: SLO tooling for the local stack."""

from __future__ import annotations

from pathlib import Path

import click

import cqox_platform.cli.context as context
from cqox_platform.cli.group import ErrorGroup


@click.group("slo", cls=ErrorGroup)
def slo() -> None:
    """SLO tooling for the local stack."""


@slo.command("backfill")
@click.option("--days", default=7, show_default=True, help="Whole UTC days before today to fill.")
@click.option("--wait/--no-wait", default=True, help="Wait until Prometheus serves the new blocks.")
def slo_backfill(days: int, wait: bool) -> None:
    """Backfill the stack's Prometheus with synthetic CQOx traffic history (job cqox-traffic) for past days.

    Days already backfilled are skipped (recorded in the stack's prometheus/backfilled-days.json), so running
    it again never writes conflicting samples.
    """
    import json
    from datetime import UTC, datetime, timedelta

    from cqox_platform.slo.backfill import backfill, wait_for_series
    from cqox_platform.slo.traffic import Segment, VersionTraffic, history_openmetrics

    stack_dir = Path(context.settings().stack_dir)
    state = stack_dir / "prometheus" / "backfilled-days.json"
    done = set(json.loads(state.read_text())) if state.exists() else set()
    today = datetime.now(UTC).date()
    wanted = [today - timedelta(days=n) for n in range(days, 0, -1)]
    missing = [d for d in wanted if d.isoformat() not in done]
    if not missing:
        click.echo(f"nothing to do: {wanted[0]}..{wanted[-1]} already backfilled")
        return
    versions = {"stable": VersionTraffic(), "canary": VersionTraffic(rps=20.0)}
    segments = [
        Segment(
            datetime.combine(d, datetime.min.time(), UTC).timestamp(),
            datetime.combine(d + timedelta(days=1), datetime.min.time(), UTC).timestamp(),
            versions,
            reset=(i == 0 or missing[i - 1] != d - timedelta(days=1)),
        )
        for i, d in enumerate(missing)
    ]
    click.echo(f"backfilling {len(missing)} day(s) {missing[0]}..{missing[-1]} of one-minute history ...", err=True)
    backfill(
        history_openmetrics(segments, {"job": "cqox-traffic", "instance": "backfill"}),
        stack_dir / "prometheus" / "data",
    )
    state.write_text(json.dumps(sorted(done | {d.isoformat() for d in missing})))
    if wait:
        prometheus = context.prometheus()
        first = datetime.combine(missing[0] + timedelta(days=1), datetime.min.time(), UTC).timestamp()
        wait_for_series(
            lambda: bool(
                prometheus.query('count(http_requests_total{job="cqox-traffic",instance="backfill"})', at=first)
            ),
            timeout=240,
        )
    click.echo(f"backfilled {len(missing)} day(s); slo_report can now be materialized for them")
