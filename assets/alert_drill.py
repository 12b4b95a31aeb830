"""``alert_drill``: prove, weekly, that each alert family reaches the receiver within its expected time.

Refused where ``CQOX_ENVIRONMENT`` is ``production``. Launch it from the UI (``alert_drill_job``, config: which
families) or let the weekly schedule run it. Results: per family the verdict, time to detect and the bound with
its derivation; the history of earlier drills (their materializations) as a table and a chart; one row per
family in ``audit_log`` (action ``alert_drill``) when the schema is there; and the check
``alerts_arrive_within_bounds``, failed by any family whose alert was late, missing, or whose rule is not loaded.
"""

import uuid
from contextlib import contextmanager

import dagster as dg
import psycopg
from psycopg.types.json import Jsonb

from assets.metadata import column, table
from cqox_platform.alerts.client import ReceiverClient
from cqox_platform.alerts.drill.journal import FaultJournal, journal_path
from cqox_platform.alerts.drill.runner import FAMILIES, DrillEnv, FamilyResult, run_drill
from cqox_platform.charts import render_lines_svg, svg_markdown
from cqox_platform.errors import CqoxError
from cqox_platform.pushgateway import Pushgateway
from cqox_platform.resources.alertmanager import AlertmanagerResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.settings import get_settings
from cqox_platform.slo.spec import load_spec, spec_path

ASSET = "alert_drill"
CHECK = "alerts_arrive_within_bounds"
HISTORY = 10


class AlertDrillConfig(dg.Config):
    #: Which families to drill (all by default; replica_paused is skipped on a single node).
    families: list[str] = list(FAMILIES)


def _history(context: dg.AssetExecutionContext, current: list[FamilyResult]) -> tuple[list[list], str]:
    """Rows of the earlier drills and this one, and a chart of time to detect per family over them."""
    records = context.instance.fetch_materializations(dg.AssetKey(ASSET), limit=HISTORY - 1).records
    runs: list[tuple[str, list[dict]]] = []
    for record in reversed(records):
        value = record.asset_materialization.metadata.get("results") if record.asset_materialization else None
        if value is not None and isinstance(value.value, list):
            runs.append((record.run_id[:8], value.value))
    runs.append((context.run.run_id[:8], [r.as_dict() for r in current]))
    rows = [[run, r["family"], r["status"], r["time_to_detect"], r["bound_seconds"]] for run, rs in runs for r in rs]
    families = sorted({r["family"] for _, rs in runs for r in rs})
    series = {
        f: [next((r["time_to_detect"] for r in rs if r["family"] == f), None) for _, rs in runs] for f in families
    }
    bounds = {f"{r.family} bound": r.bound_seconds for r in current if r.bound_seconds is not None}
    chart = render_lines_svg(f"Alert drill: time to detect, s (last {len(runs)} drills)", series, " s", bounds)
    return rows, svg_markdown(chart, "alert drill time to detect")


def _audit(postgres_admin: PostgresResource, drill_id: str, run_id: str, results: list[FamilyResult]) -> str:
    try:
        with postgres_admin.connect(autocommit=True) as conn:
            if not conn.execute("SELECT to_regclass('audit_log') IS NOT NULL").fetchone()[0]:
                return "audit_log does not exist (materialize cqox_schema): results only in this materialization"
            for r in results:
                conn.execute(
                    "INSERT INTO audit_log (user_id, action, resource, details) VALUES (%s, 'alert_drill', %s, %s)",
                    (run_id, r.family, Jsonb({**r.as_dict(), "drill_id": drill_id})),
                )
    except psycopg.Error as exc:
        return f"audit_log not written ({type(exc).__name__}): results only in this materialization"
    return f"{len(results)} row(s) in audit_log (action alert_drill)"


@dg.asset(
    group_name="alerting",
    kinds={"prometheus"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset=ASSET,
            description="Every drilled family's alert reached the receiver within its bound (derived from the "
            "loaded rule's for:, evaluation interval, scrape interval and Alertmanager's group_wait).",
        )
    ],
    description="Alert drill: injects one safe, reversible fault per alert family (a stale pushed metric, a "
    "burning SLO, broken WAL archiving, a paused replica on HA), measures injection -> alert at the receiver, and "
    "undoes every fault (journal; also undone by the next drill and by `stack up`). Refused on production.",
)
def alert_drill(
    context: dg.AssetExecutionContext,
    config: AlertDrillConfig,
    prometheus: PrometheusResource,
    alertmanager: AlertmanagerResource,
    postgres_admin: PostgresResource,
) -> dg.MaterializeResult:
    settings = get_settings()
    if settings.environment == "production":
        raise dg.Failure(
            "alert_drill injects faults and is refused where CQOX_ENVIRONMENT=production; run it on the local stack "
            "or a staging stack (CQOX_ENVIRONMENT=staging)."
        )
    drill_id = uuid.uuid4().hex[:8]

    @contextmanager
    def replica():
        with psycopg.connect(**{**postgres_admin.conninfo(), "port": settings.pg_replicas_port}, autocommit=True) as c:
            yield c

    env = DrillEnv(
        prometheus=prometheus.client(),
        alertmanager=alertmanager.client(),
        receiver=ReceiverClient(settings.alert_receiver_url) if settings.alert_receiver_url else None,
        journal=FaultJournal(journal_path(settings.stack_dir)),
        spec=load_spec(spec_path(settings)),
        drill_id=drill_id,
        pushgateway=Pushgateway.from_settings(settings),
        traffic_url=settings.traffic_url,
        archiver_settings=settings.wal_archiver_config,
        connect=lambda: postgres_admin.connect(autocommit=True),
        connect_replica=replica if settings.patroni_urls and settings.pg_replicas_port else None,
        log=context.log.info,
    )
    try:
        results, recovered = run_drill(env, config.families)
    except CqoxError as exc:
        raise dg.Failure(f"alert drill {drill_id} could not start: {exc}") from None
    for r in results:
        context.log.info(f"{r.family}: {r.status} ({r.detail})")
    rows, chart = _history(context, results)
    audited = _audit(postgres_admin, drill_id, context.run.run_id, results)
    failed = [r for r in results if not r.passed]
    check = dg.AssetCheckResult(
        check_name=CHECK,
        passed=not failed,
        description="every drilled alert arrived within its bound"
        if not failed
        else "; ".join(f"{r.family}: {r.status}" for r in failed),
        metadata={r.family: f"{r.status}; {r.time_to_detect} s of {r.bound_seconds} s" for r in results},
    )
    return dg.MaterializeResult(
        metadata={
            "drill_id": drill_id,
            "families": table(
                [
                    column("family"),
                    column("alert"),
                    column("verdict"),
                    column("time to detect (s)", "float", "fault injected -> alert at the receiver"),
                    column("bound (s)", "float", "the latest the alert may arrive"),
                    column("bound derived as"),
                    column("detail"),
                ],
                [
                    [r.family, r.alertname, r.status, r.time_to_detect, r.bound_seconds, r.bound_formula, r.detail]
                    for r in results
                ],
            ),
            # Each family's time on its own, so the asset's Plots view charts it across drills.
            **{
                f"time_to_detect_seconds/{r.family}": float(r.time_to_detect)
                for r in results
                if r.time_to_detect is not None
            },
            "results": dg.MetadataValue.json([r.as_dict() for r in results]),
            "history": table(
                [
                    column("run", description="the drill's run id (first 8 characters)"),
                    column("family"),
                    column("verdict"),
                    column("time to detect (s)", "float"),
                    column("bound (s)", "float"),
                ],
                rows,
            ),
            "time_to_detect_chart": dg.MetadataValue.md(chart),
            "journal_recovery": dg.MetadataValue.json(recovered),
            "audit": audited,
            "measured_at": "the receiver (what would have paged)" if env.receiver else "Alertmanager (no receiver)",
        },
        check_results=[check],
    )


alert_drill_job = dg.define_asset_job(
    "alert_drill_job", selection=[ASSET], description="One alert drill (choose the families in the launchpad)."
)

weekly_alert_drill_schedule = dg.ScheduleDefinition(
    job=alert_drill_job,
    cron_schedule="0 10 * * 2",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Tuesdays at 10:00 UTC, in working hours: the drill's pages and tickets reach people who expect them.",
)

defs = dg.Definitions(assets=[alert_drill], jobs=[alert_drill_job], schedules=[weekly_alert_drill_schedule])
