"""SLOs as assets (group ``slo``): alerting rules generated from the spec, validated, tested and loaded; the
daily SLO report, and its per-version companion for the days canary rollouts ran."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.metadata import column, table
from cqox_platform.canary.release import version_day_report
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.settings import get_settings
from cqox_platform.slo.chart import render_svg, svg_markdown
from cqox_platform.slo.report import compute_reports, history, store_reports
from cqox_platform.slo.rules import ALERT_NAMES, PAGE, TICKET, validate_rules
from cqox_platform.slo.spec import LatencySlo, QuantileSlo, load_spec, spec_path

GROUP = "slo"
RULES_FILE = "cqox-slo-rules.yml"


@dg.asset(
    group_name=GROUP,
    kinds={"prometheus"},
    description="Multiwindow multi-burn-rate recording and alerting rules from slo/slos.yaml, checked and unit-"
    "tested with promtool, then loaded into Prometheus (SIGHUP to its PID; its HTTP lifecycle API is off).",
    check_specs=[
        dg.AssetCheckSpec(
            "slo_alerts_can_fire",
            asset="slo_alert_rules",
            description="Every burn-rate condition can fire: its threshold is an error ratio below 100 %.",
        )
    ],
)
def slo_alert_rules(context: dg.AssetExecutionContext, prometheus: PrometheusResource) -> dg.MaterializeResult:
    path = spec_path()
    spec = load_spec(path)
    validated = validate_rules(spec)
    context.log.info(
        f"promtool: {validated.recording_rules} recording and {validated.alerting_rules} alerting "
        f"rules valid; {validated.tests} alert test cases passed"
    )
    for problem in validated.unfireable:
        context.log.warning(problem)
    groups = prometheus.install_rules(RULES_FILE, validated.text)
    factors = table(
        [
            column("alert"),
            column("long window"),
            column("short window"),
            column("budget spent (%)", "float", "share of the period's error budget the long window spends"),
            column("burn factor", "float", "error rate as a multiple of the rate that spends the budget evenly"),
        ],
        [
            [ALERT_NAMES[severity], a.long, a.short, round(a.budget_fraction * 100, 2), a.factor(spec.period_days)]
            for severity, pair in (("page", PAGE), ("ticket", TICKET))
            for a in pair
        ],
    )
    return dg.MaterializeResult(
        metadata={
            "spec": str(path),
            "slos": dg.MetadataValue.json([s.name for s in spec.budgeted]),
            "recording_rules": validated.recording_rules,
            "alerting_rules": validated.alerting_rules,
            "promtool_test_cases": validated.tests,
            "burn_factors": factors,
            "loaded_groups": dg.MetadataValue.json(groups),
            "rules": dg.MetadataValue.md(f"```yaml\n{validated.text}```"),
            "alerts_that_cannot_fire": dg.MetadataValue.json(list(validated.unfireable)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="slo_alerts_can_fire",
                passed=not validated.unfireable,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"cannot_fire": dg.MetadataValue.json(list(validated.unfireable))},
                description=(
                    f"{len(validated.unfireable)} burn-rate conditions can never fire (SLOs: "
                    f"{', '.join(sorted({p.split(':', 1)[0] for p in validated.unfireable}))})"
                    if validated.unfireable
                    else f"every burn-rate condition of {len(spec.budgeted)} SLOs can fire (thresholds below 100 %)"
                ),
            )
        ],
    )


#: One partition per UTC day from ``CQOX_SLO_PARTITIONS_START`` (the day the installation began serving): days
#: before it have no data to report, and a long empty range shows as mostly missing partitions in the UI.
slo_partitions = dg.DailyPartitionsDefinition(
    start_date=get_settings().slo_partitions_start.isoformat(), timezone="UTC"
)


class SloReportConfig(dg.Config):
    #: Fewer events than this in a day is "insufficient events", never a 100 % day.
    min_events: float = 1000.0


def _pct(value: float | None, digits: int = 4) -> float | None:
    """A ratio as a percentage rounded for people (99.95, not 0.99949871...); None stays an empty cell."""
    return None if value is None else round(value * 100, digits)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dg.asset(
    group_name=GROUP,
    partitions_def=slo_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # Yesterday's partition (the latest complete day) at 00:30 UTC, by sensors/backup_schedules.py's
    # slo_automation_sensor. Not on_cron: that would also wait for cqox_schema to update after every tick.
    automation_condition=(
        dg.AutomationCondition.in_latest_time_window()
        & dg.AutomationCondition.cron_tick_passed("30 0 * * *", "UTC").since_last_handled()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("yesterday's partition daily at 00:30 UTC"),
    # Yesterday's report must exist by 03:00 UTC: a day without one fails freshness until it is made.
    freshness_policy=dg.FreshnessPolicy.cron(deadline_cron="0 3 * * *", lower_bound_delta=timedelta(hours=3)),
    kinds={"prometheus", "postgres"},
    deps=[dg.AssetKey("cqox_schema")],
    check_specs=[
        dg.AssetCheckSpec(
            "slo_data_present",
            asset="slo_report",
            description="Every SLO had data on every day of the run (no data fails).",
        )
    ],
    description="Daily SLO report from Prometheus (availability, error ratio, latency percentiles, throughput, "
    "error budget over 30 days and the month, burn rates), stored in slo_reports; a range runs as one run.",
)
def slo_report(
    context: dg.AssetExecutionContext,
    config: SloReportConfig,
    prometheus: PrometheusResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    window = context.partition_time_window
    start, end = window.start.date(), (window.end - timedelta(days=1)).date()
    spec = load_spec(spec_path())
    run = compute_reports(spec, prometheus.query_range, start, end, min_events=config.min_events)
    with postgres.connect(autocommit=True) as conn:
        stored = store_reports(conn, run.days)
        past = history(conn, spec.service, end, days=30)
    context.log.info(f"{start}..{end}: {stored} SLO-days from {run.queries} Prometheus queries")
    last = [r for r in run.days if r.day == end]
    summary = table(
        [
            column("SLO"),
            column("status", description="ok, violated, insufficient_events or no_data"),
            column("SLI (%)", "float"),
            column("objective (%)", "float"),
            column("budget used, 30 d (%)", "float", "share of the error budget of the 30 days to this day"),
            column("budget used, month (%)", "float", "share of the calendar month's error budget"),
            column("burn 1h (x)", "float", "burn rate over the day's last hour"),
            column("burn 1d (x)", "float", "burn rate over the day"),
        ],
        [
            [
                r.slo,
                r.status,
                _pct(r.sli),
                _pct(r.objective),
                _pct(r.budget_consumed_30d, 2),
                _pct(r.budget_consumed_month, 2),
                _round(r.burn_rates.get("1h")),
                _round(r.burn_rates.get("1d")),
            ]
            for r in last
        ],
    )
    targets = {s.name.split("-")[-1]: s.threshold_seconds for s in spec.slos if isinstance(s, LatencySlo | QuantileSlo)}
    missing = sorted({f"{r.slo} on {r.day}" for r in run.days if r.status == "no_data"})
    # Numeric values of the last day: Dagster plots these across partitions in the asset's Plots view.
    plotted: dict[str, float] = {}
    for r in last:
        if r.budget_consumed_30d is not None:
            plotted[f"budget_remaining_30d/{r.slo}"] = round(1 - r.budget_consumed_30d, 6)
        if r.sli is not None:
            plotted[f"sli/{r.slo}"] = round(r.sli, 6)  # 0.999499, not 0.99949871...
    latency_row = next((r for r in last if r.latency_p50 is not None), None)
    if latency_row is not None:
        for q in ("p50", "p95", "p99"):
            value = getattr(latency_row, f"latency_{q}")
            if value is not None:
                plotted[f"latency_{q}_ms"] = round(value * 1000, 3)
    return dg.MaterializeResult(
        metadata={
            **plotted,
            "days": (end - start).days + 1,
            "prometheus_queries": run.queries,
            "violated": dg.MetadataValue.json(
                sorted({f"{r.slo} on {r.day}" for r in run.days if r.status == "violated"})
            ),
            "insufficient_events": dg.MetadataValue.json(
                sorted({f"{r.slo} on {r.day}" for r in run.days if r.status == "insufficient_events"})
            ),
            "service": spec.service,
            "summary": summary,
            "chart": dg.MetadataValue.md(svg_markdown(render_svg(past, targets))),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="slo_data_present",
                passed=not missing,
                description=f"no data: {', '.join(missing)}"
                if missing
                else f"every SLO had data on each of the {(end - start).days + 1} day(s)",
                metadata={"no_data": dg.MetadataValue.json(missing)},
            )
        ],
    )


# The same trigger as slo_report: yesterday's partition at 00:30 UTC, by slo_automation_sensor.
DAILY_AT_0030 = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.cron_tick_passed("30 0 * * *", "UTC").since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label("yesterday's partition daily at 00:30 UTC")


_PER_VERSION_COLUMNS = [
    column("day", description="UTC"),
    column("rollout"),
    column("window (UTC)", description="the part of the rollout inside the day"),
    column("version", description="canary or stable"),
    column("SLO"),
    column("SLI (%)", "float"),
    column("objective (%)", "float"),
    column("bad", "float", "bad events in the window"),
    column("total", "float", "all events in the window"),
    column("budget spent (%)", "float", "share of the SLO period's error budget this version spent"),
]


@dg.asset(
    group_name=GROUP,
    partitions_def=slo_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=DAILY_AT_0030,
    kinds={"prometheus", "postgres"},
    deps=[dg.AssetKey("cqox_schema")],
    description="Per-version SLO view: for each canary rollout whose window overlaps the day, "
    "availability, latency and error-budget burn of the canary and stable versions over the overlap, and the "
    "share of the SLO period's budget the canary spent. Days without a rollout report none.",
)
def slo_version_report(
    context: dg.AssetExecutionContext, prometheus: PrometheusResource, postgres: PostgresResource
) -> dg.MaterializeResult:
    window = context.partition_time_window
    spec = load_spec(spec_path())
    now = datetime.now(UTC)
    rows, spent, errors, rollouts = [], {}, [], set()
    day = window.start
    with postgres.connect(autocommit=True) as conn:
        while day < window.end:
            report = version_day_report(conn, spec, day, day + timedelta(days=1), prometheus.query, now)
            for part in report.windows:
                rollout = part.window.label
                rollouts.add(rollout)
                span = f"{part.start:%H:%M}-{part.end:%H:%M}"
                if part.error:
                    errors.append(f"{rollout} on {day.date()}: {part.error}")
                for r in part.rows:
                    sli = None if r.error_ratio is None else 1 - r.error_ratio
                    rows.append(
                        [
                            day.date().isoformat(),
                            rollout,
                            span,
                            r.version,
                            r.slo,
                            _pct(sli),
                            _pct(r.objective),
                            r.bad,
                            r.total,
                            _pct(r.budget_consumed, 4),
                        ]
                    )
                consumed = part.consumed(report.budget_slo[rollout])
                spent[f"{rollout} on {day.date()}"] = {
                    "slo": report.budget_slo[rollout],
                    "canary": part.window.canary,
                    "status": report.rollouts[rollout].status,
                    "window_seconds": part.seconds,
                    "canary_budget_consumed": consumed,
                }
            day += timedelta(days=1)
    context.log.info(f"{len(rollouts)} rollout(s) in {window.start.date()}..{(window.end - timedelta(days=1)).date()}")
    known = [v["canary_budget_consumed"] for v in spent.values() if v["canary_budget_consumed"] is not None]
    return dg.MaterializeResult(
        metadata={
            "rollouts": len(rollouts),
            # Plotted across partitions: the most budget a canary spent that day (-1: no rollout, or unknown).
            "max_canary_budget_consumed": max(known) if known else -1.0,
            "canary_budget_consumed": dg.MetadataValue.json(spent),
            **({"per_version": table(_PER_VERSION_COLUMNS, rows)} if rows else {}),
            "errors": dg.MetadataValue.json(errors),
        }
    )


defs = dg.Definitions(assets=[slo_alert_rules, slo_report, slo_version_report])
