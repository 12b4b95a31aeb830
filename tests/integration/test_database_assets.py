"""The database assets and checks through Dagster's own test harness (`materialize`), on both dialects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from assets import database
from cqox_platform.schema import Dialect
from cqox_platform.schema.metrics import insert_metrics_batched
from cqox_platform.schema.migrations import SQL_DIR, discover
from tests.helpers import table_rows

ASSETS = [database.cqox_schema, database.metrics_partitions, database.metrics_rollups, database.metrics_retention]
CHECKS = [database.schema_drift, database.rollups_fresh, database.retention_enforced]


def _resources(db) -> dict:
    """The runtime and the migrator login; a fresh test database has only its owner, so both are the owner here
    (the split itself is tested with Vault-issued users in test_vault.py and per dialect in test_migrations.py)."""
    return {"postgres": db.resource, "postgres_migrator": db.resource}


def _materialize(db) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS + CHECKS, resources=_resources(db), raise_on_error=False)


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_whole_database_graph_materializes_and_checks_pass(any_db):
    result = _materialize(any_db)
    assert result.success
    schema = _metadata(result, "cqox_schema")
    assert schema["dialect"] == any_db.dialect.value
    migrations = discover(SQL_DIR, any_db.dialect)
    assert schema["schema_version"] == migrations[-1].version
    assert schema["applied_this_run"] == [m.filename for m in migrations]
    tables = {r["table"]: r for r in table_rows(schema["tables"])}
    assert isinstance(tables["encryption_keys"]["rows"], int) and tables["encryption_keys"]["size (bytes)"] > 0
    assert [r["version"] for r in table_rows(schema["migrations"])] == [m.version for m in migrations]
    partitions = _metadata(result, "metrics_partitions")
    if any_db.dialect is Dialect.PLAIN:
        assert partitions["partitions"] >= 14
        assert partitions["days_ahead"] >= 6
    assert _checks(result) == {"schema_drift": True, "rollups_fresh": True, "retention_enforced": True}
    # A passing check says what it found, not only a green dot.
    messages = {e.check_name: e.description for e in result.get_asset_check_evaluations()}
    assert "no DDL outside migrations" in messages["schema_drift"]
    assert "within the bound of 2" in messages["rollups_fresh"], messages
    assert messages["retention_enforced"], messages

    # Materializing again is a no-op for the schema and keeps every check green.
    again = _materialize(any_db)
    assert again.success
    assert _metadata(again, "cqox_schema")["applied_this_run"] == []
    assert all(_checks(again).values())


def test_drift_check_fails_and_blocks_downstream(any_db):
    assert _materialize(any_db).success
    with any_db.connect() as conn:
        conn.execute("ALTER TABLE audit_log ADD COLUMN shadow text")
    result = _materialize(any_db)
    assert _checks(result)["schema_drift"] is False
    # The check is blocking: nothing downstream of the schema ran on a drifted database.
    assert result.asset_materializations_for_node("metrics_rollups") == []
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "schema_drift")
    added = evaluation.metadata["added_outside_migrations"].value
    assert any("audit_log.shadow" in a for a in added)
    assert "objects added" in evaluation.description and "outside migrations" in evaluation.description


def test_rollups_check_fails_when_rollups_fall_behind(any_db):
    assert _materialize(any_db).success
    now = datetime.now(UTC)
    rows = [(now - timedelta(minutes=5 * i + 1), "cqox_requests", float(i), None) for i in range(1, 60)]
    with any_db.connect() as conn, conn.transaction():
        insert_metrics_batched(conn, rows)
    result = dg.materialize(
        [database.metrics_rollups, database.rollups_fresh],
        resources=_resources(any_db),
        selection=dg.AssetSelection.checks(database.rollups_fresh),
        raise_on_error=False,
    )
    assert _checks(result) == {"rollups_fresh": False}
    assert _checks(_materialize(any_db))["rollups_fresh"] is True
