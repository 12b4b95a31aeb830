"""The backups group's Dagster wiring with in-memory fakes: assets, automation order, the base backup pool.

No stack: the core functions each asset module calls are replaced by a small in-memory world, so these prove
the wiring (resources, config, metadata, check results, automation conditions, pools) in seconds. What the core
does against real services is tested in tests/integration/test_backups.py.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

import assets.backups.alert_rules as alert_rules_module
import assets.backups.base_backup as base_backup_module
import assets.backups.dr_copy as dr_copy_module
import assets.backups.drill as drill_module
import assets.backups.wal as wal_module
import cqox_platform.backup.retention as retention_module
from assets import backups
from assets.backups.common import BASE_BACKUP_POOL
from assets.slo import slo_report
from cqox_platform.alerts.rules import CheckedRules
from cqox_platform.backup.dr_copy import DrCopyResult
from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.verify.drill import DrillResult
from cqox_platform.backup.verify.plan import DrillMode, DrillPlan, select_backup
from cqox_platform.backup.verify.proof import RestorePoint
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.stack.dagster_services import INSTANCE_CONFIG
from sensors import backup_schedules
from tests.helpers import assert_native_metadata, backup_record, wal_status

DAGSTER_YAML = INSTANCE_CONFIG  # the stack copies it into DAGSTER_HOME
BACKUP_ASSETS = [
    backups.postgres_basebackup,
    backups.wal_archive_status,
    backups.restore_drill,
    backups.backup_retention,
    backups.backups_dr_copy,
]


@dataclass
class World:
    """What the fakes share: the backups in the archive, which are verified, and whether drills pass."""

    records: list = field(default_factory=list)
    verified: set = field(default_factory=set)
    drills_pass: bool = True
    #: A drill that crashes (scratch cluster never starts) instead of reporting a failed proof.
    drills_crash: bool = False
    deleted: list = field(default_factory=list)
    backup_started: list = field(default_factory=list)
    #: When set, a base backup waits on it (to hold the pool slot while a second backup is requested).
    hold_backup: threading.Event | None = None
    #: The scratch parent each drill was given.
    drill_workdirs: list = field(default_factory=list)


class FakeArchive:
    system_id = "7001"
    root = "cqox/7001"

    def where(self, key: str) -> str:
        return f"s3://fake/{key}"

    def with_bucket(self, bucket: str) -> FakeArchive:
        return self


class FakePostgres:
    def conninfo(self):
        return {"host": "fake", "dbname": "cqox"}

    @contextlib.contextmanager
    def connect(self, *, autocommit: bool = False):
        yield object()


class FakeVault:
    def key_provider(self, key: str):
        return f"provider:{key}"


class FakeS3:
    def get_client(self):
        return object()


class FakePrometheus:
    def install_rules(self, name: str, text: str):
        return [name]


@pytest.fixture
def world(monkeypatch) -> World:
    w = World()
    archive = FakeArchive()

    def take_backup(conn, archive, provider, dsn, *, pg_basebackup, progress):
        w.backup_started.append(time.monotonic())
        if w.hold_backup is not None:
            assert w.hold_backup.wait(30), "test never released the backup"
        rec = backup_record(f"2026030{len(w.records) + 1}T030000Z")
        w.records.append(rec)
        point = RestorePoint(f"backup-{rec.backup_id}", rec.stop_lsn, 1, datetime.now(UTC), "cqox", {"t": {}})
        return rec, point

    def run_drill(archive, provider, rec, target, **kwargs):
        w.drill_workdirs.append(kwargs.get("workdir"))
        if w.drills_crash:
            raise RuntimeError("scratch cluster did not start")
        result = DrillResult("d", rec.backup_id, "b", target, datetime.now(UTC), datetime.now(UTC))
        result.seconds = {"download": 0.1, "replay": 0.2}
        result.passed = w.drills_pass
        result.status = "passed" if w.drills_pass else "failed"
        result.error = None if w.drills_pass else "checksum of public.t differs"
        if result.passed:
            w.verified.add(rec.backup_id)
        return result

    def choose_drill(conn, records, mode, *, backup_id, retention_days, rng):
        assert mode is DrillMode.for_backup
        return DrillPlan(select_backup(records, backup_id), RecoveryTarget("backup_end"), None)

    fakes = {
        base_backup_module: {"take_backup": take_backup},
        wal_module: {
            "checkpoint_restore_point": lambda conn: RestorePoint(
                "check-1", "0/3000000", 1, datetime.now(UTC), "cqox", {}
            ),
            "list_backups": lambda a: list(w.records),
            "measure": lambda conn, a, provider, oldest, switch_after: wal_status(),
        },
        drill_module: {
            "list_backups": lambda a: list(w.records),
            "choose_drill": choose_drill,
            "run_drill": run_drill,
            "record_drill": lambda conn, result: None,
            "verified_backup_ids": lambda conn: set(w.verified),
            "latest_drill": lambda conn, backup_id: None,
            "recent_drill_timings": lambda conn: [],
            "platform_cli": lambda: Path("/bin/true"),
        },
        retention_module: {
            "list_backups": lambda a: list(w.records),
            "verified_backup_ids": lambda conn: set(w.verified),
            "latest_drill": lambda conn, backup_id, passed_only=False: (
                {"drill_id": f"d-{backup_id}", "status": "passed", "finished_at": "2026-03-01T03:10:00+00:00"}
                if backup_id in w.verified
                else None
            ),
            "archived_wal_names": lambda a: ["000000010000000000000001", "000000010000000000000002"],
            "apply_retention": lambda a, plan: w.deleted.extend(plan.delete) or 3 * len(plan.delete),
            "retire_backups": lambda conn, listed, deleted: None,
        },
        dr_copy_module: {
            "copy_to_dr": lambda primary, dr, progress, reverify=False: DrCopyResult(copied=["x"], verified=1)
        },
    }
    for module, names in fakes.items():
        monkeypatch.setattr(module, "cluster_archive", lambda conn, s3, bucket: archive)
        for name, fake in names.items():
            monkeypatch.setattr(module, name, fake)
    monkeypatch.delenv("CQOX_PUSHGATEWAY_URL", raising=False)
    return w


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
    "prometheus": FakePrometheus(),
}


def materialize(assets, instance, config=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets, resources=RESOURCES, instance=instance, run_config={"ops": config or {}}, raise_on_error=False
    )


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def meta(result, node: str) -> dict:
    (event,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in event.metadata.items()}


# --- the assets with fakes --------------------------------------------------------------------------------------


def test_the_whole_group_materializes_with_fakes_and_maps_results_to_metadata(world, monkeypatch):
    monkeypatch.setattr(alert_rules_module, "check_and_test", lambda rules, tests: CheckedRules("SUCCESS", "SUCCESS"))
    with dg.instance_for_test() as instance:
        result = materialize([*BACKUP_ASSETS, backups.backup_alert_rules], instance)
    assert result.success
    backup = meta(result, "postgres_basebackup")
    assert backup["backup_id"] == world.records[0].backup_id and backup["compression_ratio"] == 2.5
    drill = meta(result, "restore_drill")
    assert drill["status"] == "passed" and drill["rto_seconds"] == 0.3
    assert "passed" not in drill and "error" not in drill  # status says it; a passing drill has no error
    assert (drill["download_seconds"], drill["replay_seconds"]) == (0.1, 0.2)  # plotted across drills
    assert [(r.data["phase"], r.data["seconds"]) for r in drill["rto_breakdown"].records] == [
        ("download", 0.1),
        ("replay", 0.2),
        ("total (RTO)", 0.3),
    ]
    assert meta(result, "wal_archive_status")["rpo_seconds"] == 30.0
    assert meta(result, "backups_dr_copy")["copied_objects"] == 1
    assert meta(result, "backup_retention")["backups_kept"] == [world.records[0].backup_id]
    assert meta(result, "backup_alert_rules")["loaded_groups"] == ["cqox-backup-alerts.yml"]
    assert checks(result) == {
        "wal_rpo_within_target": True,
        "wal_archive_continuous": True,
        "wal_archiver_healthy": True,
        "drill_passed": True,
        "latest_backup_verified_restorable": True,
        "dr_copy_verified": True,
    }


def test_a_failing_drill_in_the_same_run_skips_retention(world):
    world.drills_pass = False
    with dg.instance_for_test() as instance:
        result = materialize([backups.postgres_basebackup, backups.restore_drill, backups.backup_retention], instance)
    assert checks(result) == {"drill_passed": False, "latest_backup_verified_restorable": False}
    assert not result.asset_materializations_for_node("backup_retention") and not world.deleted


def test_a_drill_writes_its_scratch_cluster_under_tmpdir_where_a_run_pod_mounts_its_scratch_volume(
    world, monkeypatch, tmp_path
):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the directory it chose first
    with dg.instance_for_test() as instance:
        assert materialize([backups.postgres_basebackup, backups.restore_drill], instance).success
    assert world.drill_workdirs == [tmp_path]


def test_drill_config_is_typed(world):
    with dg.instance_for_test() as instance:
        materialize([backups.postgres_basebackup], instance)
        with pytest.raises(dg.DagsterInvalidConfigError, match="sometimes"):
            materialize([backups.restore_drill], instance, {"restore_drill": {"config": {"mode": "sometimes"}}})
        random_ok = dg.RunConfig(ops={"restore_drill": drill_module.DrillConfig(mode=DrillMode.random)})
        assert random_ok.to_config_dict()["ops"]["restore_drill"]["config"]["mode"] == "random"


# --- automation: the order of the chain -------------------------------------------------------------------------

DAY = datetime(2026, 11, 10, tzinfo=UTC)


def at(hours: int, minutes: int = 0, seconds: int = 30) -> datetime:
    return DAY + timedelta(hours=hours, minutes=minutes, seconds=seconds)


class Ticks:
    """Successive automation evaluations over one instance, as the sensor would run them (cursor kept)."""

    def __init__(self, defs, instance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def at(self, when: datetime) -> dict[str, set]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, evaluation_time=when, cursor=self.cursor
        )
        self.cursor = result.cursor
        requested = {}
        for key in self.defs.resolve_asset_graph().materializable_asset_keys:
            partitions = result.get_requested_partitions(key)
            if partitions:
                requested[key.to_user_string()] = partitions
        return requested


def test_the_0300_tick_requests_backup_drill_wal_check_and_dr_copy_once_and_not_retention(world):
    defs = dg.Definitions(assets=BACKUP_ASSETS, resources=RESOURCES)
    with dg.instance_for_test() as instance:
        ticks = Ticks(defs, instance)
        assert ticks.at(at(2, 59)) == {}  # first evaluation: nothing pending yet
        assert set(ticks.at(at(3, 0))) == {  # the drill follows from the backups table (new_backup_drill_sensor)
            "postgres_basebackup",
            "wal_archive_status",
            "backups_dr_copy",
        }
        assert ticks.at(at(3, 1)) == {}  # handled: no second request of anything


def test_a_new_backup_gets_no_drill_from_automation_only_its_dr_copy(world):
    defs = dg.Definitions(assets=BACKUP_ASSETS, resources=RESOURCES)
    with dg.instance_for_test() as instance:
        ticks = Ticks(defs, instance)
        ticks.at(at(10, 1))
        materialize([backups.postgres_basebackup], instance)  # e.g. from the UI
        assert set(ticks.at(at(10, 2))) == {"backups_dr_copy"}  # its drill comes from new_backup_drill_sensor


def _drill_sensor(instance, monkeypatch, waiting):
    monkeypatch.setattr(backup_schedules, "system_id", lambda conn: "7001")
    monkeypatch.setattr(backup_schedules, "undrilled_backups", lambda conn, sid, since: list(waiting))
    context = dg.build_sensor_context(instance=instance, resources={"postgres_admin": FakePostgres()})
    return backup_schedules.new_backup_drill_sensor(context)


def test_the_drill_sensor_requests_the_newest_undrilled_backup_keyed_by_its_id(monkeypatch):
    with dg.instance_for_test() as instance:
        result = _drill_sensor(instance, monkeypatch, ["20260302T030000Z", "20260301T030000Z"])
        (request,) = result.run_requests
        assert request.run_key == "drill-20260302T030000Z"
        assert request.run_config["ops"]["restore_drill"]["config"] == {
            "backup_id": "20260302T030000Z",
            "mode": "for_backup",
        }
        nothing = _drill_sensor(instance, monkeypatch, [])
        assert not nothing.run_requests and "has a drill" in nothing.skip_reason.skip_message


def test_the_drill_sensor_waits_while_a_drill_is_queued_or_running(monkeypatch):
    with dg.instance_for_test() as instance:
        instance.add_run(
            dg.DagsterRun(
                job_name="restore_drill_job",
                run_id="r1",
                status=dg.DagsterRunStatus.STARTED,
                asset_selection=frozenset({dg.AssetKey("restore_drill")}),
            )
        )
        result = _drill_sensor(instance, monkeypatch, ["20260302T030000Z"])
        assert not result.run_requests and "one at a time" in result.skip_reason.skip_message


@pytest.mark.parametrize("failure", ["proof fails", "drill crashes"])
def test_a_failing_drill_check_blocks_retention_until_the_newest_backup_is_verified(world, failure):
    defs = dg.Definitions(assets=BACKUP_ASSETS, resources=RESOURCES)
    with dg.instance_for_test() as instance:
        materialize([backups.postgres_basebackup, backups.restore_drill], instance)
        world.drills_pass = False
        world.drills_crash = failure == "drill crashes"
        materialize([backups.postgres_basebackup], instance)
        failed = materialize([backups.restore_drill], instance)
        assert not failed.success  # blocking check failed, or the step raised before any check ran
        if failure == "proof fails":
            assert checks(failed)["latest_backup_verified_restorable"] is False
        world.drills_crash = False
        ticks = Ticks(defs, instance)
        ticks.at(at(4, 59))
        assert "backup_retention" not in ticks.at(at(5, 0))  # the 05:00 tick passed, the check is failing
        assert "backup_retention" not in ticks.at(at(6, 0))
        world.drills_pass = True
        assert checks(materialize([backups.restore_drill], instance))["latest_backup_verified_restorable"]
        assert "backup_retention" in ticks.at(at(6, 5))  # the pending 05:00 tick runs once the check passes
        assert "backup_retention" not in ticks.at(at(6, 6))


def test_retention_runs_at_0500_when_the_newest_backup_is_verified(world):
    defs = dg.Definitions(assets=BACKUP_ASSETS, resources=RESOURCES)
    with dg.instance_for_test() as instance:
        materialize([backups.postgres_basebackup, backups.restore_drill], instance)
        ticks = Ticks(defs, instance)
        ticks.at(at(4, 59))
        assert "backup_retention" in ticks.at(at(5, 0))


def test_slo_report_gets_yesterdays_partition_by_automation_alone():
    defs = dg.Definitions(assets=[slo_report], resources={"prometheus": FakePrometheus(), "postgres": FakePostgres()})
    with dg.instance_for_test() as instance:
        ticks = Ticks(defs, instance)
        assert ticks.at(at(0, 10)) == {}
        assert ticks.at(at(0, 30)) == {"slo_report": {"2026-11-09"}}
        assert ticks.at(at(0, 40)) == {}
        assert ticks.at(DAY + timedelta(days=1, minutes=30, seconds=30)) == {"slo_report": {"2026-11-10"}}


def test_the_automation_sensors_target_only_their_own_assets():
    from cqox_platform.definitions import defs

    graph = defs.resolve_asset_graph()
    backup_keys = backup_schedules.backup_automation_sensor.asset_selection.resolve(graph)
    slo_keys = backup_schedules.slo_automation_sensor.asset_selection.resolve(graph)
    assert {k.to_user_string() for k in backup_keys} == {
        a.key.to_user_string()
        for a in [*BACKUP_ASSETS, backups.backups_dr_retention, backups.backup_alert_rules, backups.recoverability]
    }
    assert {k.to_user_string() for k in slo_keys} == {"slo_report", "slo_version_report"}
    automated = {k for k in graph.materializable_asset_keys if graph.get(k).automation_condition is not None}
    assert automated <= backup_keys | slo_keys  # nothing left for a default sensor to start
    repo = defs.get_repository_def()
    assert repo.get_sensor_def("backup_automation_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert repo.get_sensor_def("slo_automation_sensor").default_status == dg.DefaultSensorStatus.RUNNING


def test_freshness_policies_are_the_new_api():
    from cqox_platform.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in (
        "postgres_basebackup",
        "restore_drill",
        "wal_archive_status",
        "slo_report",
        "vault_snapshot",
        "vault_restore_drill",
    ):
        policy = graph.get(dg.AssetKey(key)).freshness_policy
        assert isinstance(policy, dg.FreshnessPolicy), key


# --- the base backup pool -------------------------------------------------------------------------------------


def test_a_second_base_backup_waits_for_the_pool_slot_then_runs(world):
    concurrency = yaml.safe_load(DAGSTER_YAML.read_text())["concurrency"]
    assert concurrency["pools"]["default_limit"] == 1
    world.hold_backup = threading.Event()
    results = {}
    with dg.instance_for_test(overrides={"concurrency": {"pools": concurrency["pools"]}}) as instance:

        def run(name):
            results[name] = materialize([backups.postgres_basebackup], instance)

        first = threading.Thread(target=run, args=("first",))
        first.start()
        deadline = time.monotonic() + 30
        while not world.backup_started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(world.backup_started) == 1
        second = threading.Thread(target=run, args=("second",))
        second.start()
        time.sleep(3)
        assert len(world.backup_started) == 1, "the second backup started while the first held the slot"
        pool = instance.event_log_storage.get_concurrency_info(BASE_BACKUP_POOL)
        assert pool.slot_count == 1 and pool.active_slot_count == 1 and pool.pending_step_count == 1
        world.hold_backup.set()
        first.join(60)
        second.join(60)
    assert results["first"].success and results["second"].success
    assert len(world.records) == 2


# --- retention's config (issue 13 items 1 and 10) ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"keep_days": 0}, {"keep_days": -5}, {"keep_full": 0}])
def test_retention_refuses_a_window_or_count_below_one_and_deletes_nothing(world, bad):
    with dg.instance_for_test() as instance:
        materialize([backups.postgres_basebackup, backups.restore_drill], instance)
        result = materialize([backups.backup_retention], instance, {"backup_retention": {"config": bad}})
    assert not result.success and not world.deleted
    assert "at least 1" in str(result.get_step_failure_events()[0].event_specific_data.error)


def test_retention_deletes_nothing_while_a_backup_newer_than_the_last_drill_is_unverified(world):
    """restore_drill's last check judged the backup of its own run; retention reads the newest backup's drill."""
    with dg.instance_for_test() as instance:
        for _ in range(3):
            materialize([backups.postgres_basebackup, backups.restore_drill], instance)
        materialize([backups.postgres_basebackup], instance)  # taken since: no drill yet
        config = {"backup_retention": {"config": {"keep_full": 1, "keep_days": 1}}}
        result = materialize([backups.backup_retention], instance, config)
        assert not result.success and not world.deleted
        error = str(result.get_step_failure_events()[0].event_specific_data.error)
        assert f"newest backup {world.records[-1].backup_id} has no passing drill" in error
        materialize([backups.restore_drill], instance)  # the drill of the newest backup
        done = materialize([backups.backup_retention], instance, config)
    assert done.success and world.deleted
    assert meta(done, "backup_retention")["gate_drill_id"] == f"d-{world.records[-1].backup_id}"


def test_retention_metadata_says_why_each_backup_stays_or_goes(world):
    with dg.instance_for_test() as instance:
        for _ in range(3):
            materialize([backups.postgres_basebackup, backups.restore_drill], instance)
        result = materialize([backups.backup_retention], instance, {"backup_retention": {"config": {"keep_full": 1}}})
    plan = meta(result, "backup_retention")
    rows = {r.data["backup_id"]: r.data for r in plan["plan"].records}
    assert plan["keep_full"] == 1 and set(rows) == {r.backup_id for r in world.records}
    assert rows[world.records[-1].backup_id]["action"] == "keep" and all(r["reason"] for r in rows.values())
    assert plan["backups_kept_count"] + plan["backups_deleted_count"] == len(world.records)


def test_the_groups_metadata_is_native_tables_and_numbers(world, monkeypatch):
    """Every entry of every materialization and check: typed tables, no Markdown tables, no empty text."""
    monkeypatch.setattr(alert_rules_module, "check_and_test", lambda rules, tests: CheckedRules("SUCCESS", "SUCCESS"))
    with dg.instance_for_test() as instance:
        result = materialize([*BACKUP_ASSETS, backups.backup_alert_rules], instance)
    events = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    assert len(events) == len(BACKUP_ASSETS) + 1
    for event in events:
        assert_native_metadata(event.metadata, str(event.asset_key))
    for evaluation in result.get_asset_check_evaluations():
        assert_native_metadata(evaluation.metadata, evaluation.check_name)
        assert evaluation.description, f"{evaluation.check_name} passed without a message"
