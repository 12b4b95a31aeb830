"""The recoverability asset's wiring with in-memory evidence: typed table, plotted numbers, its check, when it runs.

The verdict itself is table-tested in tests/unit/backup/verify/test_recoverability.py; against the real stack the
asset runs in the main job (tests/e2e).
"""

from __future__ import annotations

import contextlib
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

import assets.backups.recoverability_view as module
from assets import backups
from cqox_platform.backup.verify.info import UnreadableCopy
from cqox_platform.definitions import defs as all_defs
from cqox_platform.resources.backups import BackupStorageResource
from tests.helpers import drill_row as _drill
from tests.helpers import recoverability_evidence as _evidence


class FakePostgres:
    @contextlib.contextmanager
    def connect(self, *, autocommit: bool = False):
        yield object()


class FakeVault:
    def key_provider(self, key: str):
        return f"provider:{key}"


class FakeS3:
    def get_client(self):
        return object()


#: A key pair file for the DR region's clients (built, never connected: the fakes stand in for S3).
DR_KEYS = Path(tempfile.mkdtemp(prefix="cqox-unit-dr-")) / "dr-credentials"
DR_KEYS.write_text("[cqox-dr]\naws_access_key_id = unit\naws_secret_access_key = unit-secret\n")

RESOURCES = {
    "postgres_admin": FakePostgres(),
    "vault": FakeVault(),
    "s3": FakeS3(),
    "backups": BackupStorageResource(
        bucket="primary",
        dr_bucket="dr",
        dr_endpoint="https://127.0.0.1:9",
        dr_credentials_file=str(DR_KEYS),
        dr_reader_credentials_file=str(DR_KEYS),
        archiver_settings="/nonexistent",
    ),
}


def _run(monkeypatch, evidence) -> dg.ExecuteInProcessResult:
    seen = {}

    def read_evidence(conn, s3, provider, bucket, dr_bucket, *, as_of, dr_s3=None):
        seen.update(bucket=bucket, dr_bucket=dr_bucket, provider=provider)
        return evidence

    monkeypatch.setattr(module, "read_evidence", read_evidence)
    monkeypatch.setattr(module, "system_id", lambda conn: "7")
    with dg.instance_for_test() as instance:
        result = dg.materialize([backups.recoverability], resources=RESOURCES, instance=instance, raise_on_error=False)
    assert seen == {"bucket": "primary", "dr_bucket": "dr", "provider": "provider:cqox-backups"}
    return result


def test_a_recoverable_verdict_shows_a_typed_table_and_plain_numbers_and_passes(monkeypatch):
    result = _run(monkeypatch, _evidence())
    assert result.success
    (event,) = result.asset_materializations_for_node("recoverability")
    meta = event.metadata
    assert list(meta)[:3] == ["verdict", "summary", "newest_backup_id"]  # what the page shows on top
    assert meta["verdict"].value == "recoverable" and meta["newest_backup_id"].value == "20260301T030000Z"
    table = meta["summary"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == ["item", "value", "seconds", "target", "ok"]
    assert [c.type for c in table.schema.columns] == ["string", "string", "float", "string", "bool"]
    rows = {r.data["item"]: r.data for r in table.records}
    assert rows["last drill RTO"]["seconds"] == 42.5 and rows["RPO"]["ok"] is True
    for name in ("newest_backup_age_seconds", "rpo_seconds", "rto_seconds", "dr_lag_seconds"):
        assert isinstance(meta[name], dg.FloatMetadataValue), name  # numeric: Dagster plots it
    assert isinstance(meta["window_latest"], dg.TimestampMetadataValue)
    assert "why_and_next_step" not in meta  # nothing to say when it is fine
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "recoverable" and check.passed
    assert check.description.startswith("recoverable: newest backup 20260301T030000Z")


def test_at_risk_fails_the_check_saying_why_and_what_to_do(monkeypatch):
    result = _run(monkeypatch, _evidence(last_drill=_drill("d-9", status="failed")))
    assert result.success  # the asset reports; the check fails
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description.startswith("at risk: the last drill d-9") and "materialize restore_drill" in (
        check.description
    )
    (event,) = result.asset_materializations_for_node("recoverability")
    assert "the last drill d-9" in event.metadata["why_and_next_step"].value


def test_nothing_readable_is_not_recoverable_and_leaves_unknown_numbers_out(monkeypatch):
    down = UnreadableCopy("primary", "s3://p/", "the primary copy (s3://p/) cannot be read: down")
    result = _run(monkeypatch, _evidence(copies=[], unreadable=[down], last_drill=None))
    (event,) = result.asset_materializations_for_node("recoverability")
    assert event.metadata["verdict"].value == "not recoverable"
    assert event.metadata["newest_backup_id"].value == "none"
    assert not {"rpo_seconds", "rto_seconds", "dr_lag_seconds", "newest_backup_age_seconds"} & set(event.metadata)
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and "cannot be read: down" in check.description


# --- when it runs ---------------------------------------------------------------------------------------------

T0 = datetime(2026, 3, 10, 10, 1, 30, tzinfo=UTC)


def _requested(defs, instance, when, cursor):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=when, cursor=cursor)
    return result.get_requested_partitions(backups.recoverability.key), result.cursor


@pytest.mark.parametrize("upstream", ["postgres_basebackup", "restore_drill", "wal_archive_status", "backups_dr_copy"])
def test_it_runs_after_each_upstream_update_including_a_backup_reported_from_outside(upstream):
    defs = dg.Definitions(assets=[*backups.defs.assets], resources={**RESOURCES, "prometheus": object()})
    with dg.instance_for_test() as instance:
        _, cursor = _requested(defs, instance, T0, None)
        instance.report_runless_asset_event(dg.AssetMaterialization(upstream, metadata={"made_by": "CLI"}))
        requested, cursor = _requested(defs, instance, T0 + timedelta(minutes=1), cursor)
        assert requested, f"not requested after {upstream} was updated"
        assert not _requested(defs, instance, T0 + timedelta(minutes=2), cursor)[0]  # once


def test_it_also_runs_on_the_15_minute_tick_without_upstream_runs():
    defs = dg.Definitions(assets=[*backups.defs.assets], resources={**RESOURCES, "prometheus": object()})
    with dg.instance_for_test() as instance:
        _, cursor = _requested(defs, instance, T0, None)
        assert not _requested(defs, instance, T0 + timedelta(minutes=5), cursor)[0]
        assert _requested(defs, instance, T0 + timedelta(minutes=14), cursor)[0]  # 10:15 passed


def test_the_automation_sensor_evaluates_it_and_it_has_a_freshness_policy():
    sensor = all_defs.get_repository_def().get_sensor_def("backup_automation_sensor")
    graph = all_defs.resolve_asset_graph()
    assert backups.recoverability.key in sensor.asset_selection.resolve(graph)
    assert graph.get(backups.recoverability.key).freshness_policy is not None
