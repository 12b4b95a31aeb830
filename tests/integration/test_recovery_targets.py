"""`cqox-platform restore` to a transaction id and to an LSN on the real stack, compared with what was committed.

Rows are written in separate transactions whose commits are out of xid order (the older xid commits second), each
with its xid (``txid_current()``) and the WAL insert position right after its commit. A restore to an xid must hold
exactly the rows committed up to and including that transaction's commit, a restore to an LSN exactly those
whose commit lies before it, as PostgreSQL defines both (inclusive). The LSN restore names no backup: the newest
verified one is chosen and said; it pauses at the target instead of promoting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import jsonschema
import psycopg
import pytest

from assets import backups as backup_assets
from cqox_platform.cli.json_schema import load_schema
from cqox_platform.pgserver import stop_immediately
from cqox_platform.schema import MigrationRunner
from tests.helpers import (
    assert_drill_passed,
    asset_metadata,
    make_world_traversable_tmpdir,
    materialize_backups,
    materialize_vault_config,
    postgres_admin,
)

CLI = [sys.executable, "-m", "cqox_platform.cli"]


@pytest.fixture(scope="module")
def env(stack):
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        yield stack.env()


def _conn(stack) -> psycopg.Connection:
    return psycopg.connect(**postgres_admin(stack).conninfo(), autocommit=True)


def _cli(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Commit:
    label: str
    xid: int
    lsn_after: str  # pg_current_wal_insert_lsn() right after the commit


def _write_out_of_order(stack) -> list[Commit]:
    """Five transactions, in commit order; 'a' took its xid before 'b' but commits after it."""
    commits: list[Commit] = []
    with _conn(stack) as one, _conn(stack) as two:
        one.execute("CREATE TABLE IF NOT EXISTS target_probe (label text PRIMARY KEY, xid bigint)")

        def begin(conn: psycopg.Connection, label: str) -> int:
            conn.execute("BEGIN")
            xid = conn.execute("SELECT txid_current()").fetchone()[0]
            conn.execute("INSERT INTO target_probe VALUES (%s, %s)", [label, xid])
            return xid

        def commit(conn: psycopg.Connection, label: str, xid: int) -> None:
            conn.execute("COMMIT")
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            commits.append(Commit(label, xid, lsn))

        xid_a = begin(one, "a")
        xid_b = begin(two, "b")
        commit(two, "b", xid_b)
        commit(one, "a", xid_a)
        for label in ("c", "d", "e"):
            commit(one, label, begin(one, label))
    assert xid_a < xid_b
    return commits


def _archive_everything(stack, timeout=120) -> None:
    """Switch segments and wait until the one holding the last commit is archived."""
    with _conn(stack) as conn:
        name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last >= name:
                return
            time.sleep(0.5)
    raise AssertionError(f"{name} was not archived within {timeout} s")


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _committed_up_to_xid(commits: list[Commit], xid: int) -> set[str]:
    """recovery_target_xid, inclusive: everything committed before that transaction's commit, and it."""
    order = [c.xid for c in commits].index(xid)
    return {c.label for c in commits[: order + 1]}


def _committed_before_lsn(commits: list[Commit], lsn: str) -> set[str]:
    """recovery_target_lsn, inclusive: every commit whose record ends at or before the target."""
    return {c.label for c in commits if _lsn(c.lsn_after) <= _lsn(lsn)}


class Restored:
    """A restored data directory and its private server, from its postgresql.auto.conf."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        conf = (pgdata / "postgresql.auto.conf").read_text().splitlines()

        def setting(name: str) -> str:
            return [line for line in conf if line.startswith(f"{name} ")][-1].split("'")[1]

        self.port, self.socket_dir = int(setting("port")), setting("unix_socket_directories")

    def query(self, dbname: str, sql: str) -> list[tuple]:
        with psycopg.connect(host=self.socket_dir, port=self.port, user="postgres", dbname=dbname) as conn:
            return conn.execute(sql).fetchall()


def test_restores_to_an_xid_and_to_an_lsn_hold_exactly_what_was_committed_up_to_them(stack, env):
    drilled = materialize_backups(stack, env, [backup_assets.postgres_basebackup, backup_assets.restore_drill])
    assert_drill_passed(drilled)
    backup_id = asset_metadata(drilled, "postgres_basebackup")["backup_id"]
    commits = _write_out_of_order(stack)
    _archive_everything(stack)
    b, c = commits[0], commits[2]  # commit order: b, a, c, d, e
    root = make_world_traversable_tmpdir("cqox-targets-")
    database = env["CQOX_PG_DB"]
    try:
        # An xid the cluster never committed is refused before anything is downloaded.
        with _conn(stack) as conn:
            conn.execute("BEGIN")
            aborted = conn.execute("SELECT txid_current()").fetchone()[0]
            conn.execute("ROLLBACK")
        for xid, why in ((aborted, "aborted"), (commits[-1].xid + 100_000, "in the future")):
            refused = _cli(
                env, "restore", "--backup", backup_id, "--target-xid", str(xid), "--pgdata", str(root / "no")
            )
            assert refused.returncode != 0 and why in refused.stderr, refused.stderr[-3000:]
            assert "restore: " not in refused.stderr and not (root / "no").exists(), refused.stderr[-3000:]

        # To b's xid: b only, although a's older xid was already in progress (a committed after b).
        pgdata = root / "xid"
        done = _cli(env, "restore", "--backup", backup_id, "--target-xid", str(b.xid), "--pgdata", str(pgdata))
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"restored backup {backup_id} and promoted" in done.stdout, done.stdout
        assert f"transaction {b.xid}" in done.stdout, done.stdout
        try:
            labels = {r[0] for r in Restored(pgdata).query(database, "SELECT label FROM target_probe")}
        finally:
            stop_immediately(pgdata)
        assert labels == _committed_up_to_xid(commits, b.xid) == {"b"}

        # To the position right after c's commit, no --backup, paused there: b, a and c, still recovering.
        pgdata = root / "lsn"
        done = _cli(env, "restore", "--target-lsn", c.lsn_after, "--target-action", "pause", "--pgdata", str(pgdata))
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"chose backup {backup_id}: the newest backup verified by a drill" in done.stderr, done.stderr[-3000:]
        assert "PAUSED at the target" in done.stdout and "promoted (" not in done.stdout, done.stdout
        try:
            server = Restored(pgdata)
            state = server.query("postgres", "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()")
            labels = {r[0] for r in server.query(database, "SELECT label FROM target_probe")}
        finally:
            stop_immediately(pgdata)
        assert state == [(True, "paused")]
        assert labels == _committed_before_lsn(commits, c.lsn_after) == {"b", "a", "c"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_restore_that_shuts_down_at_its_target_says_so_and_leaves_the_server_stopped(stack, env):
    drilled = materialize_backups(stack, env, [backup_assets.postgres_basebackup])
    backup_id = asset_metadata(drilled, "postgres_basebackup")["backup_id"]
    root = make_world_traversable_tmpdir("cqox-targets-")
    pgdata = root / "immediate"
    try:
        done = _cli(
            env,
            "restore",
            *("--backup", backup_id, "--target-immediate", "--target-action", "shutdown", "--pgdata", str(pgdata)),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "SHUT DOWN at the target" in done.stdout and "promoted (" not in done.stdout, done.stdout
        assert not (pgdata / "postmaster.pid").exists()
        # The same restore for a script: one JSON object on stdout, the schema's, saying what the server did.
        as_json = root / "immediate-json"
        done = _cli(
            env,
            "restore",
            *("--backup", backup_id, "--target-immediate", "--target-action", "shutdown", "--pgdata", str(as_json)),
            "--json",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        jsonschema.Draft202012Validator(load_schema("restore"), format_checker=jsonschema.FormatChecker()).validate(
            result
        )
        assert (result["backup_id"], result["outcome"], result["started"]) == (backup_id, "shut down", True)
        assert result["pgdata"] == str(as_json) and not (as_json / "postmaster.pid").exists()
    finally:
        stop_immediately(pgdata)
        stop_immediately(root / "immediate-json")
        shutil.rmtree(root, ignore_errors=True)
