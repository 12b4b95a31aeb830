"""Repositories of other engines verified on the real stack: a cluster archived the way CloudNativePG's Barman
Cloud plugin archives production's (``barman-cloud-wal-archive`` to the shipped manifest's destination in the DR
bucket, base backups by ``barman-cloud-backup``), and a pgBackRest stanza in the stack's S3.

The tests of the Barman module run in order on one cluster: the drill, then the stopped archiver, then the
deleted segment (which breaks the archive for anything after it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import dagster as dg
import jsonschema
import pytest
import yaml

from assets.backups.repositories import repository_assets
from cqox_platform.alerts import BACKUP_ALERT_RULES
from cqox_platform.backup.archive.wal_names import Segment, segment_name
from cqox_platform.backup.repository.config import RepositorySpec, S3Settings
from cqox_platform.backup.repository.pgbackrest import PgBackRestRepository
from cqox_platform.backup.repository.s3creds import S3Access
from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.verify.checks import archiving_failing, wal_verdicts
from cqox_platform.backup.verify.drill import record_drill, run_repository_drill, verified_backup_ids
from cqox_platform.backup.verify.gauges import WAL_RPO_SECONDS, for_repository, wal_samples
from cqox_platform.backup.verify.repositories import backup_before, capture_point, ensure_point_archived
from cqox_platform.backup.wal.status import measure_repository
from cqox_platform.cli.json_schema import load_schema
from cqox_platform.schema import MigrationRunner
from cqox_platform.stack.cnpg import CnpgLikeCluster, manifest_target
from cqox_platform.stack.s3 import DR_WRITER_PROFILE
from tests.helpers import make_world_traversable_tmpdir, materialize_vault_config, postgres_admin


def _dr_region(env: dict[str, str]) -> dict[str, str]:
    """The manifest's destination (``s3://cqox-backups-dr``) is in the DR region: its own server, CA and writer key,
    as CloudNativePG's ObjectStore would be configured with them."""
    return {
        "endpoint_url": env["CQOX_S3_DR_ENDPOINT"],
        "ca_bundle": env["CQOX_S3_DR_CACERT"],
        "credentials_file": env["CQOX_S3_DR_CREDENTIALS_FILE"],
        "profile": DR_WRITER_PROFILE,
    }


def _s3_access(env: dict[str, str]) -> S3Access:
    return S3Access(**_dr_region(env))


@pytest.fixture(scope="module")
def ledger(stack):
    """The platform's database (migrated): where restore points and drills of every repository are recorded."""
    with postgres_admin(stack).connect(autocommit=True) as conn:
        MigrationRunner().migrate(conn)
        yield conn


@pytest.fixture(scope="module")
def cnpg(stack, ledger):
    env = stack.env()
    root = make_world_traversable_tmpdir("cqox-cnpg-")
    cluster = CnpgLikeCluster(root / "cluster", _s3_access(env))
    cluster.init()
    cluster.start()
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 50000) g")
            conn.execute("CREATE INDEX ON orders (body)")
        cluster.base_backup()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_cluster_archives_at_the_manifests_destination(cnpg):
    target = manifest_target()
    assert cnpg.repository.destination == target.destination == "s3://cqox-backups-dr/postgres/"
    assert cnpg.repository.server_name == "cqox-postgres-cluster"
    backups = cnpg.repository.list_backups()
    assert backups and backups[0].begin_wal in cnpg.repository.archived_wal()


def test_a_barman_cloud_backup_drill_passes_with_row_checksums_against_a_restore_point(cnpg, ledger):
    with cnpg.connect() as source:
        source.execute("INSERT INTO orders SELECT g, 'after the backup' FROM generate_series(50001, 50500) g")
        point = capture_point(source, ledger, cnpg.repository)
        source.execute("INSERT INTO orders SELECT g, 'after the point' FROM generate_series(60001, 60500) g")
        ensure_point_archived(source, cnpg.repository, point)
    backup = backup_before(cnpg.repository.list_backups(), point)
    assert backup is not None
    result = run_repository_drill(cnpg.repository, backup, RecoveryTarget("restore_point", point.name), expected=point)
    record_drill(ledger, result)
    assert result.status == "passed", result.error
    assert result.tables_checked == 1 and result.details["rows_checked"] == 50500
    assert result.indexes_checked >= 1
    assert "no backup_manifest" in result.details["integrity_check"]
    assert set(result.seconds) == {"restore", "verify", "replay", "checks"}
    assert backup.backup_id in verified_backup_ids(ledger, cnpg.repository.name)
    assert backup.backup_id not in verified_backup_ids(ledger)  # the platform's own archive is another repository


def test_the_repository_assets_take_measure_and_drill_with_their_checks(stack, cnpg):
    """The per-repository assets in one run: barman-cloud-backup (as the ScheduledBackup would), the WAL status
    and the drill, each with the same checks as the platform's own archive."""
    env = stack.env()
    spec = RepositorySpec(
        name=cnpg.repository.name,
        engine="barman-cloud",
        source=cnpg.conninfo,
        destination=cnpg.repository.destination,
        server_name=cnpg.repository.server_name,
        s3=S3Settings(**_dr_region(env)),
        take_base_backups=True,
    )
    before = {b.backup_id for b in cnpg.repository.list_backups()}
    with mock.patch.dict(os.environ, env):
        result = dg.materialize(
            repository_assets(spec), resources={"postgres_admin": postgres_admin(stack)}, raise_on_error=False
        )
    assert result.success
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    prefix = spec.asset_prefix
    assert checks == {
        (f"{prefix}_wal_status", "wal_rpo_within_target"): True,
        (f"{prefix}_wal_status", "wal_archive_continuous"): True,
        (f"{prefix}_wal_status", "wal_archiver_healthy"): True,
        (f"{prefix}_restore_drill", "drill_passed"): True,
        (f"{prefix}_restore_drill", "latest_backup_verified_restorable"): True,
    }
    (backup,) = result.asset_materializations_for_node(f"{prefix}_base_backup")
    assert backup.metadata["backup_id"].value not in before
    (drill,) = result.asset_materializations_for_node(f"{prefix}_restore_drill")
    assert drill.metadata["status"].value == "passed"
    assert drill.metadata["backup_id"].value == backup.metadata["backup_id"].value  # the newest one


def test_backup_info_shows_the_repository_beside_the_platforms_copies(stack, cnpg, tmp_path):
    """``backup info --json`` lists the Barman repository with its latest drill, RTO, RPO, gaps and window (the
    platform's own archive is empty on this stack, so the verdict fails on it, not on the repository)."""
    env = stack.env()
    config = tmp_path / "repositories.yaml"
    spec = {
        "name": cnpg.repository.name,
        "engine": "barman-cloud",
        "source": cnpg.conninfo,
        "destination": cnpg.repository.destination,
        "server_name": cnpg.repository.server_name,
        "s3": _dr_region(env),
        "rpo_target_seconds": 3600,
    }
    config.write_text(yaml.safe_dump({"repositories": [spec]}))
    with mock.patch.dict(os.environ, env):
        assert materialize_vault_config(stack).success
    run = subprocess.run(
        [sys.executable, "-m", "cqox_platform.cli", "backup", "info", "--json"],
        env={**os.environ, **env, "CQOX_BACKUP_REPOSITORIES": str(config)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    document = json.loads(run.stdout)
    jsonschema.Draft202012Validator(load_schema("backup-info")).validate(document)
    (summary,) = document["repositories"]
    assert summary["name"] == cnpg.repository.name and summary["engine"] == "barman-cloud", summary
    assert summary["latest_drill"]["status"] == "passed" and summary["latest_drill"]["rto_seconds"] > 0
    assert summary["wal_gaps"] == [] and summary["recovery_window"]["start"] is not None
    assert not [r for r in document["verdict"]["reasons"] if r.startswith(cnpg.repository.name)], document["verdict"]


def test_a_stopped_barman_cloud_wal_archive_makes_the_rpo_alert_fire(cnpg, tmp_path):
    with cnpg.connect() as source:
        # Archiving: the tail is pushed out and reaches the bucket; what is left is the few records written since.
        running = measure_repository(source, cnpg.repository, cnpg.repository.list_backups()[0], switch_after=0)
        assert running.rpo_bytes < 16 * 2**20 and running.rpo_seconds is not None, running.as_dict()
        assert running.rpo_seconds < 60 and not archiving_failing(running), running.as_dict()
        cnpg.set_archive_command("false")  # barman-cloud-wal-archive no longer runs: every segment stays in pg_wal
        try:
            source.execute("CREATE TABLE unprotected AS SELECT g FROM generate_series(1, 20000) g")
            source.execute("SELECT pg_switch_wal()")
            _wait_for_archiver_failure(source)
            stopped = measure_repository(source, cnpg.repository, None, wait_for_archive=3)
        finally:
            cnpg.set_archive_command(cnpg.archive_command())
        system_id = str(source.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    assert stopped.rpo_bytes > 0 and stopped.rpo_seconds is not None, stopped.as_dict()
    assert archiving_failing(stopped)
    verdicts = {v.name: v for v in wal_verdicts(stopped, has_backup=True, rpo_target_seconds=0)}
    assert not verdicts["wal_rpo_within_target"].passed

    samples = for_repository(cnpg.repository.name, wal_samples(system_id, stopped, failing=True))
    name, labels, measured = next(s for s in samples if s[0] == WAL_RPO_SECONDS)
    rpo = round(measured)
    # While the archiver stays stopped nothing newer reaches the bucket: the measured RPO grows a second a second.
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{selector}}}"
    shutil.copy(BACKUP_ALERT_RULES, tmp_path / "rules.yml")
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": f"{rpo}+60x40"}],
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "CqoxWalRpoAboveTarget",
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, "severity": "ticket"},
                                "exp_annotations": _annotations("CqoxWalRpoAboveTarget", rpo + 30 * 60),
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run(["promtool", "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wait_for_archiver_failure(conn, timeout: float = 60.0) -> None:
    """Until PostgreSQL's archiver has tried the switched segment and failed (it runs on its own schedule)."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] == 0:
        assert time.monotonic() < deadline, "the archiver never tried the switched segment"
        time.sleep(0.5)


def _annotations(alert: str, value: float) -> dict[str, str]:
    """The alert's annotations as promtool renders them (summary's ``humanizeDuration`` of ``value``)."""
    rules = yaml.safe_load(Path(BACKUP_ALERT_RULES).read_text())["groups"][0]["rules"]
    annotations = dict(next(r for r in rules if r.get("alert") == alert)["annotations"])
    seconds = int(value)
    parts = [f"{seconds // 3600}h"] if seconds >= 3600 else []
    parts += [f"{seconds % 3600 // 60}m", f"{seconds % 60}s"]
    annotations["summary"] = annotations["summary"].replace("{{ $value | humanizeDuration }}", " ".join(parts))
    return annotations


def test_a_barman_wal_segment_deleted_from_the_bucket_fails_continuity_naming_it(cnpg):
    with cnpg.connect() as source:
        for _ in range(3):  # segments after the backup, so one in the middle can go
            source.execute("INSERT INTO orders SELECT g, 'more' FROM generate_series(70001, 80000) g")
            source.execute("SELECT pg_switch_wal()")
        oldest = cnpg.repository.list_backups()[0]
        # Waits until the bucket holds everything written so far (the switched segments are archived one by one).
        before = measure_repository(source, cnpg.repository, oldest, switch_after=0, wait_for_archive=180)
        assert before.gaps == [] and before.required_segments >= 3, before.as_dict()
        newest = Segment.parse(before.continuity_to)
        victim = segment_name(newest.timeline, newest.segno - 1)  # inside the range a restore replays
        assert before.continuity_from < victim < before.continuity_to
        url = urlparse(cnpg.repository.destination)
        client = cnpg.repository.s3.client()
        prefix = f"{url.path.strip('/')}/{cnpg.repository.server_name}/wals/{victim[:16]}/{victim}"
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=url.netloc, Prefix=prefix).get("Contents", [])]
        assert len(keys) == 1, keys
        client.delete_object(Bucket=url.netloc, Key=keys[0])
        after = measure_repository(source, cnpg.repository, oldest)
    assert after.gaps == [victim]
    continuity = next(v for v in wal_verdicts(after, has_backup=True, rpo_target_seconds=900) if "contin" in v.name)
    assert not continuity.passed and continuity.metadata["gaps"] == [victim], continuity
    assert f"missing {victim}" in continuity.description


# --- pgBackRest ------------------------------------------------------------------------------------------------


@pytest.fixture
def pgbackrest_stanza(stack, ledger, tmp_path_factory):
    """The benchmark's pgBackRest configuration (S3 over verified TLS, encrypted) on a cluster archiving to it."""
    from benchmarks._pgbackrest import configure

    env = stack.env()
    root = make_world_traversable_tmpdir("cqox-pgbackrest-")
    with mock.patch.dict(os.environ, env):
        assert materialize_vault_config(stack).success
        cluster = CnpgLikeCluster(root / "cluster", _s3_access(env), name="pgbackrest")
        work = root / "pgbackrest"
        work.mkdir()
        conf = configure(work, cluster.pgdata, cluster.port, str(cluster.socket_dir))
    cluster.init()
    repository = PgBackRestRepository("pgbackrest", conf.conf, "cqox")
    cluster.set_archive_command(conf.archive_push(cluster.pgdata), reload=False)
    cluster.start()
    try:
        conf.run("stanza-create")
        with cluster.connect() as conn:
            conn.execute("CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 30000) g")
        conf.run("--type=full", "backup")
        yield cluster, repository
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_pgbackrest_repository_is_drilled(pgbackrest_stanza, ledger):
    cluster, repository = pgbackrest_stanza
    with cluster.connect() as source:
        source.execute("INSERT INTO orders SELECT g, 'after the backup' FROM generate_series(30001, 30500) g")
        point = capture_point(source, ledger, repository)
        ensure_point_archived(source, repository, point)
        status = measure_repository(source, repository, repository.list_backups()[0])
    assert status.gaps == [] and status.continuity_from is not None, status.as_dict()
    backup = backup_before(repository.list_backups(), point)
    assert backup is not None
    result = run_repository_drill(repository, backup, RecoveryTarget("restore_point", point.name), expected=point)
    record_drill(ledger, result)
    assert result.status == "passed", result.error
    assert result.details["rows_checked"] == 30500
    assert result.details["integrity_check"].startswith("pgbackrest verify")


def test_a_drill_of_a_repository_whose_wal_is_gone_fails_and_says_why(cnpg, ledger):
    """After the deleted segment, replay to a point past it cannot finish: the drill fails, it does not hang."""
    with cnpg.connect() as source:
        point = capture_point(source, ledger, cnpg.repository)
        ensure_point_archived(source, cnpg.repository, point)
    backup = cnpg.repository.list_backups()[0]
    result = run_repository_drill(
        cnpg.repository, backup, RecoveryTarget("restore_point", point.name), expected=point, replay_timeout=300
    )
    assert result.status == "failed"
    assert "recovery" in result.error
