"""A fresh `stack up` leaves a working WAL archiver before PostgreSQL has WAL to archive (issue 13 item 8).

Before: PostgreSQL started first and its archive_command failed until someone materialized `vault_config`
("archiver settings ... do not exist yet"), and after a restart until OpenBao was up ("Vault ... unreachable").
This stack is its own (the session stack's archiver has long been configured by other tests).
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.helpers import materialize_vault_config, running_stack

FAILURE_MARKS = ("NOT archived", "archive command failed", "do not exist yet", "unreachable")


def _conninfo(stack) -> dict:
    env = stack.env()
    return {
        "host": env["CQOX_PG_HOST"],
        "port": int(env["CQOX_PG_PORT"]),
        "dbname": env["CQOX_PG_DB"],
        "user": env["CQOX_PG_USER"],
        "sslmode": "verify-full",
        "sslrootcert": env["CQOX_PG_SSLROOTCERT"],
        "passfile": env["CQOX_PG_PASSFILE"],
    }


def _switch_and_wait(stack, timeout: float = 60) -> tuple[str, int, int]:
    with psycopg.connect(**_conninfo(stack), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bootstrap_probe (at timestamptz)")
        conn.execute("INSERT INTO bootstrap_probe VALUES (now())")
        name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last, archived, failed = conn.execute(
                "SELECT last_archived_wal, archived_count, failed_count FROM pg_stat_archiver"
            ).fetchone()
            if last and last >= name:
                return name, archived, failed
            time.sleep(0.5)
    raise AssertionError(f"{name} was not archived within {timeout} s; log:\n{_failures(stack)}")


def _failures(stack) -> list[str]:
    log = stack.service("postgres").log_path.read_text(errors="replace")
    return [line for line in log.splitlines() if any(mark in line for mark in FAILURE_MARKS)]


@pytest.fixture(scope="module")
def fresh_stack():
    with running_stack("cqox-test-bootstrap-", with_dagster=False) as st:
        yield st


def test_a_fresh_stack_archives_without_vault_config_and_without_failures(fresh_stack):
    _, archived, failed = _switch_and_wait(fresh_stack)
    assert archived >= 1 and failed == 0, _failures(fresh_stack)
    assert _failures(fresh_stack) == []


def test_a_restarted_stack_archives_without_failures(fresh_stack):
    fresh_stack.down()
    fresh_stack.up()
    _, _, failed = _switch_and_wait(fresh_stack)  # pg_stat_archiver counts since this start
    assert failed == 0 and _failures(fresh_stack) == [], _failures(fresh_stack)


def test_vault_config_keeps_what_the_stack_configured(fresh_stack, monkeypatch):
    """The stack's bootstrap and `vault_config` agree: a later vault_config leaves the archiver's file alone."""
    import os

    settings_file = fresh_stack.env()["CQOX_WAL_ARCHIVER_CONFIG"]
    before = Path(settings_file).read_text()
    for key in list(os.environ):
        if key.startswith(("CQOX_", "AWS_", "VAULT_", "BAO_")):
            monkeypatch.delenv(key)
    result = materialize_vault_config(fresh_stack)
    assert result.success
    changed = next(iter(result.get_asset_materialization_events()))
    changes = changed.event_specific_data.materialization.metadata["changed_this_run"].value
    assert not any("archiver" in c or "cqox-wal-archiver" in c for c in changes), changes
    assert Path(settings_file).read_text() == before
    _, _, failed = _switch_and_wait(fresh_stack)
    assert failed == 0
