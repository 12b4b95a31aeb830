"""The CQOx database as assets: schema, metrics partitions, rollups and retention (group ``database``).

Thin by design: each asset opens a connection through ``PostgresResource``, calls ``cqox_platform.schema``
and turns the result into metadata a DBA reads in the UI. Checks that protect data are blocking.

Two logins (``cqox_platform.db.roles``): what changes the schema or needs ownership logs in as the migrator
(``postgres_migrator``): migrations and the drift check, pg_partman maintenance, dropping expired partitions
and the check that reads partman's retention, refreshing the aggregates. ``rollups_fresh`` only reads, so it
uses the runtime login (``postgres``, DML only) like the rest of the platform.
"""

import math
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.metadata import column, table
from cqox_platform.errors import MigrationError
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.schema import MigrationRunner
from cqox_platform.schema.fingerprint import compare_fingerprint
from cqox_platform.schema.inspect import table_stats
from cqox_platform.schema.lifecycle import (
    configured_retention,
    enforce_retention,
    maintain_partitions,
    summarize_partitions,
)
from cqox_platform.schema.rollups import ROLLUPS, refresh_rollups, rollup_lag

GROUP = "database"
#: Rollups may trail the raw data by this many complete buckets before the freshness check fails.
MAX_ROLLUP_BUCKETS_BEHIND = 2


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "sql"},
    # The migrator's database login is issued by Vault, so Vault is configured first.
    deps=[dg.AssetKey("vault_config")],
    description="The CQOx schema: sql/ migrations applied in order under an advisory lock, with checksums.",
)
def cqox_schema(context: dg.AssetExecutionContext, postgres_migrator: PostgresResource) -> dg.MaterializeResult:
    with postgres_migrator.connect(autocommit=True) as conn:
        report = MigrationRunner().migrate(conn, progress=context.log.info)
        stats = table_stats(conn, report.dialect)
        history = conn.execute(
            "SELECT version, filename, left(checksum, 12), applied_at, duration_ms FROM schema_migrations "
            "ORDER BY version"
        ).fetchall()
    context.log.info(
        f"{postgres_migrator.describe()}: dialect {report.dialect}, {len(report.applied)} applied now, "
        f"version {report.current_version}"
    )
    return dg.MaterializeResult(
        metadata={
            "database": postgres_migrator.describe(),
            "dialect": report.dialect.value,
            "schema_version": report.current_version,
            "applied_this_run": dg.MetadataValue.json([m.filename for m in report.applied]),
            "lock_wait_s": round(report.waited_for_lock_s, 3),
            "migrations": table(
                [
                    column("version", "int"),
                    column("file"),
                    column("sha256", description="first 12 hex digits of the file's checksum"),
                    column("applied at", description="UTC"),
                    column("duration (ms)", "int"),
                ],
                [[v, f, c, a.isoformat(timespec="seconds"), d] for v, f, c, a, d in history],
            ),
            "tables": table(
                [
                    column("table"),
                    column("rows", "int", "count(*) when the asset ran"),
                    column("size (bytes)", "int", "table, indexes and TOAST"),
                ],
                [[s.name, s.rows, s.total_bytes] for s in stats],
            ),
            "total_rows": sum(s.rows for s in stats),
            "total_bytes": sum(s.total_bytes for s in stats),
        }
    )


@dg.asset_check(asset=cqox_schema, blocking=True, description="Files unchanged, none pending, no manual DDL.")
def schema_drift(postgres_migrator: PostgresResource) -> dg.AssetCheckResult:
    runner = MigrationRunner()
    with postgres_migrator.connect(autocommit=True) as conn:
        try:
            _dialect, pending, applied = runner.verify(conn)
        except MigrationError as exc:
            return dg.AssetCheckResult(passed=False, description=str(exc))
        drift = compare_fingerprint(conn)
    problems = []
    if pending:
        problems.append("pending migrations: " + ", ".join(m.filename for m in pending))
    if drift is None:
        problems.append("no schema fingerprint recorded; materialize cqox_schema")
    elif not drift.clean:
        problems.append(f"{len(drift.added)} objects added and {len(drift.removed)} removed outside migrations")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems)
        if problems
        else f"{len(applied)} migrations applied, files unchanged, no DDL outside migrations",
        metadata={
            "applied": len(applied),
            "problems": dg.MetadataValue.json(problems),
            "added_outside_migrations": dg.MetadataValue.json(drift.added if drift else []),
            "removed_outside_migrations": dg.MetadataValue.json(drift.removed if drift else []),
        },
    )


@dg.asset(
    group_name=GROUP,
    deps=[cqox_schema],
    kinds={"postgres"},
    description="metrics partitions (pg_partman, a week ahead) or TimescaleDB chunks; stray rows re-homed.",
)
def metrics_partitions(context: dg.AssetExecutionContext, postgres_migrator: PostgresResource) -> dg.MaterializeResult:
    with postgres_migrator.connect(autocommit=True) as conn:
        dialect = MigrationRunner().resolve_dialect(conn)
        result = maintain_partitions(conn, dialect)
    s = result.summary
    context.log.info(
        f"{s.count} partitions/chunks, {s.days_ahead:.1f} days ahead, "
        f"{result.rows_moved_from_default} rows moved out of the default partition"
    )
    return dg.MaterializeResult(
        metadata={
            "dialect": dialect.value,
            "partitions": s.count,
            "compressed_chunks": s.compressed,
            "oldest_start": s.oldest_start.isoformat() if s.oldest_start else "none",
            "newest_end": s.newest_end.isoformat() if s.newest_end else "none",
            "days_ahead": round(s.days_ahead, 2),
            "rows_moved_from_default": result.rows_moved_from_default,
            "rows_in_default_partition": s.rows_in_default,
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[metrics_partitions],
    kinds={"postgres"},
    description="metrics_5min and metrics_1h: continuous aggregates, or rollup tables refreshed from a watermark.",
)
def metrics_rollups(context: dg.AssetExecutionContext, postgres_migrator: PostgresResource) -> dg.MaterializeResult:
    with postgres_migrator.connect(autocommit=True) as conn:
        dialect = MigrationRunner().resolve_dialect(conn)
        refreshed = refresh_rollups(conn, dialect)
        lags = [rollup_lag(conn, name) for name in ROLLUPS]
    for r in refreshed:
        context.log.info(f"{r.rollup}: {r.rows} rows after refresh in {r.duration_s:.2f} s")
    return dg.MaterializeResult(
        metadata={
            "dialect": dialect.value,
            **{f"{r.rollup}_rows": r.rows for r in refreshed},
            **{f"{r.rollup}_refresh_seconds": round(r.duration_s, 3) for r in refreshed},
            **{f"{lag.rollup}_buckets_behind": float(lag.buckets_behind) for lag in lags},
            "refresh": table(
                [
                    column("rollup"),
                    column("window start", description="UTC; incremental: from the rollup's watermark"),
                    column("window end", description="UTC; now: up to the newest raw row"),
                    column("rows", "int", "rows in the rollup after the refresh"),
                    column("seconds", "float", "time the refresh took"),
                    column(
                        "buckets behind",
                        "float",
                        "complete buckets of raw data not yet rolled up; empty: the rollup has no bucket yet",
                    ),
                ],
                [
                    [
                        r.rollup,
                        r.window_start.isoformat() if r.window_start else "incremental",
                        r.window_end.isoformat() if r.window_end else "now",
                        r.rows,
                        r.duration_s,
                        lag.buckets_behind if math.isfinite(lag.buckets_behind) else None,
                    ]
                    for r, lag in zip(refreshed, lags, strict=True)
                ],
            ),
        }
    )


@dg.asset_check(asset=metrics_rollups, description="Each rollup trails the raw metrics by at most two buckets.")
def rollups_fresh(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connect(autocommit=True) as conn:
        lags = [rollup_lag(conn, name) for name in ROLLUPS]
    worst = max(lags, key=lambda lag: lag.buckets_behind)
    passed = all(lag.buckets_behind <= MAX_ROLLUP_BUCKETS_BEHIND for lag in lags)
    return dg.AssetCheckResult(
        passed=passed,
        description=f"{worst.rollup} trails the raw metrics by {worst.buckets_behind:g} bucket(s) "
        f"({'within' if passed else 'over'} the bound of {MAX_ROLLUP_BUCKETS_BEHIND}); the others by no more",
        metadata={
            "max_buckets_behind": MAX_ROLLUP_BUCKETS_BEHIND,
            "worst_rollup": worst.rollup,
            **{f"{lag.rollup}_buckets_behind": float(lag.buckets_behind) for lag in lags},
        },
    )


@dg.asset(
    group_name=GROUP,
    deps=[metrics_partitions],
    kinds={"postgres"},
    description="90-day retention by dropping whole partitions/chunks; compression after 7 days on TimescaleDB.",
)
def metrics_retention(context: dg.AssetExecutionContext, postgres_migrator: PostgresResource) -> dg.MaterializeResult:
    with postgres_migrator.connect(autocommit=True) as conn:
        dialect = MigrationRunner().resolve_dialect(conn)
        result = enforce_retention(conn, dialect)
    days = result.retention / timedelta(days=1)
    context.log.info(f"retention {days:g} days: dropped {len(result.dropped)} partitions/chunks")
    return dg.MaterializeResult(
        metadata={
            "dialect": dialect.value,
            "retention_days": result.retention / timedelta(days=1),
            "dropped": dg.MetadataValue.json(result.dropped),
            "dropped_count": len(result.dropped),
            "oldest_row": result.oldest_row.isoformat() if result.oldest_row else "none",
            "partitions_remaining": result.summary.count,
            "compressed_chunks": result.summary.compressed,
        }
    )


@dg.asset_check(
    asset=metrics_retention,
    description="No row is older than the retention plus one partition (the granularity of a drop).",
)
def retention_enforced(postgres_migrator: PostgresResource) -> dg.AssetCheckResult:
    with postgres_migrator.connect(autocommit=True) as conn:
        dialect = MigrationRunner().resolve_dialect(conn)
        retention = configured_retention(conn, dialect)
        oldest = conn.execute("SELECT min(time) FROM metrics").fetchone()[0]
        summary = summarize_partitions(conn, dialect)
    limit = datetime.now(UTC) - retention - timedelta(days=1)
    passed = oldest is None or oldest >= limit
    if oldest is None:
        description = "no rows in metrics: nothing to retain"
    else:
        verdict = "within" if passed else "older than"
        description = f"oldest row from {oldest:%Y-%m-%d %H:%M} UTC, {verdict} the limit {limit:%Y-%m-%d %H:%M} UTC"
    return dg.AssetCheckResult(
        passed=passed,
        description=description,
        metadata={
            "retention_days": retention / timedelta(days=1),
            "oldest_row": oldest.isoformat() if oldest else "none",
            "oldest_allowed": limit.isoformat(),
            "partitions": summary.count,
        },
    )


defs = dg.Definitions(
    assets=[cqox_schema, metrics_partitions, metrics_rollups, metrics_retention],
    asset_checks=[schema_drift, rollups_fresh, retention_enforced],
)
