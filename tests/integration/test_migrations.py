"""The migration runner against real servers: PostgreSQL 15 (plain) and PGlite-TimescaleDB."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from cqox_platform.errors import MigrationChecksumError, MigrationFailedError
from cqox_platform.schema import Dialect, MigrationRunner
from cqox_platform.schema.fingerprint import compare_fingerprint
from cqox_platform.schema.migrations import SQL_DIR, discover

ROADMAP_TABLES = {"metrics", "audit_log", "datasets", "analysis_results", "encryption_keys"}


def _relations(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition"
    ).fetchall()
    return {r[0] for r in rows}


def test_migrations_apply_once_then_noop(any_db):
    with any_db.connect() as conn:
        first = MigrationRunner().migrate(conn)
        assert first.dialect is any_db.dialect
        expected = [m.filename for m in discover(SQL_DIR, any_db.dialect)]
        assert [m.filename for m in first.applied] == expected
        second = MigrationRunner().migrate(conn)
        assert second.applied == []
        assert [m.filename for m in second.already_applied] == expected
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(expected)
        assert ROADMAP_TABLES | {"metrics_5min", "metrics_1h"} <= _relations(conn)


def test_timescaledb_dialect_builds_hypertable_caggs_and_policies(timescale_db):
    with timescale_db.connect() as conn:
        MigrationRunner().migrate(conn)
        hypertables = conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables").fetchall()
        assert ("metrics",) in hypertables
        caggs = {r[0] for r in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")}
        assert caggs == {"metrics_5min", "metrics_1h"}
        jobs = conn.execute(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs WHERE job_id >= 1000"
        ).fetchall()
        procs = sorted(p for p, _h, _c in jobs)
        assert procs == [
            "policy_compression",
            "policy_refresh_continuous_aggregate",
            "policy_refresh_continuous_aggregate",
            "policy_retention",
        ]
        retention = next(c for p, _h, c in jobs if p == "policy_retention")
        assert retention["drop_after"] == "90 days"
        compression = next(c for p, _h, c in jobs if p == "policy_compression")
        assert compression["compress_after"] == "7 days"
        segmentby = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'metrics' AND segmentby_column_index IS NOT NULL"
        ).fetchall()
        assert segmentby == [("metric_name",)]


def test_plain_dialect_partitions_with_pg_partman(plain_db):
    with plain_db.connect() as conn:
        MigrationRunner().migrate(conn)
        config = conn.execute(
            "SELECT partition_interval, premake, retention FROM partman.part_config "
            "WHERE parent_table = 'public.metrics'"
        ).fetchone()
        assert config == ("1 day", 7, "90 days")
        ahead = conn.execute(
            "SELECT count(*) FROM partman.show_partitions('public.metrics') p, LATERAL "
            "partman.show_partition_info(p.partition_schemaname || '.' || p.partition_tablename) i "
            "WHERE i.child_start_time > now()"
        ).fetchone()[0]
        assert ahead >= 6


def test_changed_applied_file_is_refused_naming_it(any_db, tmp_path: Path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    with any_db.connect() as conn:
        MigrationRunner(sql_dir).migrate(conn)
        edited = sql_dir / "0002_core_tables.sql"
        edited.write_text(edited.read_text() + "\nCREATE INDEX idx_sneaky ON datasets (name);\n")
        (sql_dir / "0099_next.sql").write_text("CREATE TABLE should_not_exist (id int);\n")
        with pytest.raises(MigrationChecksumError, match=r"0002_core_tables\.sql"):
            MigrationRunner(sql_dir).migrate(conn)
        # Refusing means refusing everything: the new file after it was not applied either.
        assert "should_not_exist" not in _relations(conn)
        latest = discover(SQL_DIR, any_db.dialect)[-1].version
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == latest


def test_broken_file_rolls_back_completely_and_names_the_file(any_db, tmp_path: Path):
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_first.sql").write_text("CREATE TABLE first_table (id int);\n")
    (sql_dir / "0002_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nINSERT INTO half_done VALUES (1);\nCREAT TABLE typo (id int);\n"
    )
    with any_db.connect() as conn:
        with pytest.raises(MigrationFailedError, match=r"0002_broken\.sql") as excinfo:
            MigrationRunner(sql_dir, dialect=any_db.dialect).migrate(conn)
        assert "rolled back" in str(excinfo.value)
        relations = _relations(conn)
        assert "first_table" in relations
        assert "half_done" not in relations
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
        # Fixing the file lets the next run apply it.
        (sql_dir / "0002_broken.sql").write_text("CREATE TABLE half_done (id int);\n")
        report = MigrationRunner(sql_dir, dialect=any_db.dialect).migrate(conn)
        assert [m.version for m in report.applied] == [2]


def test_concurrent_runners_are_serialised_by_the_advisory_lock(plain_db, tmp_path: Path):
    """Two runners start together; one applies, the other waits for the lock and then finds nothing to do.

    Plain PostgreSQL only: PGlite serves every client from one shared session, where advisory locks cannot
    exclude anyone (its server serialises transactions instead).
    """
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_slow.sql").write_text("CREATE TABLE slow (id int);\nSELECT pg_sleep(1.5);\n")
    reports, errors = [], []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with plain_db.connect() as conn:
                barrier.wait()
                reports.append(MigrationRunner(sql_dir, dialect=Dialect.PLAIN).migrate(conn))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    applied_counts = sorted(len(r.applied) for r in reports)
    assert applied_counts == [0, 1]
    waiter = next(r for r in reports if not r.applied)
    assert waiter.waited_for_lock_s > 0.5
    with plain_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 1


def test_manual_ddl_shows_up_as_drift(any_db):
    with any_db.connect() as conn:
        MigrationRunner().migrate(conn)
        assert compare_fingerprint(conn).clean
        conn.execute("ALTER TABLE datasets ADD COLUMN added_by_hand text")
        conn.execute("DROP INDEX idx_audit_action")
        drift = compare_fingerprint(conn)
        assert any("datasets.added_by_hand" in obj for obj in drift.added)
        assert any("idx_audit_action" in obj for obj in drift.removed)
        # A no-op migrate must not bless the drift by re-recording the fingerprint.
        MigrationRunner().migrate(conn)
        assert not compare_fingerprint(conn).clean


def test_runtime_role_has_dml_on_every_table_now_and_later_but_no_ddl(any_db):
    """Issue 13, item 11(e), on both dialects: the runtime group role reads and writes, never reshapes."""
    with any_db.connect() as conn:
        MigrationRunner().migrate(conn)
        # As a later migration would: created by the schema owner, with no GRANT of its own.
        conn.execute("CREATE TABLE later_table (id bigserial PRIMARY KEY, note text)")
        conn.execute("SET ROLE cqox_runtime")
        try:
            conn.execute("INSERT INTO later_table (note) VALUES ('a')")
            conn.execute("INSERT INTO metrics (time, metric_name, value) VALUES (now(), 'roles_test', 1)")
            conn.execute("INSERT INTO audit_log (action) VALUES ('roles.test')")
            conn.execute("UPDATE datasets SET status = status")
            assert conn.execute("SELECT count(*) FROM metrics_5min").fetchone()[0] >= 0
            for statement in (
                "CREATE TABLE sneaky (id int)",
                "DROP TABLE later_table",
                "ALTER TABLE datasets ADD COLUMN sneaky text",
                "TRUNCATE audit_log",
                "DELETE FROM audit_log",
                "UPDATE schema_migrations SET checksum = 'forged'",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    conn.execute(statement)
        finally:
            conn.execute("RESET ROLE")
            conn.execute("DROP TABLE later_table")
