"""Restore-point capture keeps writers waiting for milliseconds, not for the checksums, and waits out a long
writer instead of failing: on the stack's PostgreSQL, in a fresh database with the platform's schema."""

from __future__ import annotations

import threading
import time

import pytest

from cqox_platform.backup.verify.proof import capture_restore_point, table_checksums
from cqox_platform.schema import MigrationRunner


@pytest.fixture
def db(plain_db):
    with plain_db.connect() as conn:
        MigrationRunner().migrate(conn)
        conn.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, amount int NOT NULL)")
        conn.execute("INSERT INTO ledger (amount) SELECT g FROM generate_series(1, 1000) g")
    return plain_db


def test_a_writer_holding_its_lock_longer_than_one_attempt_delays_the_capture_instead_of_failing_it(db):
    """A long COPY (here: an open transaction that inserted, for longer than the former 10 s lock timeout) is
    waited out with short lock attempts; the capture then sees its rows."""
    released = threading.Event()

    def long_writer() -> None:
        with db.connect() as conn, conn.transaction():
            conn.execute("INSERT INTO ledger (amount) VALUES (7)")
            time.sleep(11)
        released.set()

    writer = threading.Thread(target=long_writer)
    writer.start()
    time.sleep(0.5)
    with db.connect() as conn:
        point = capture_restore_point(conn, "after-long-writer")
    writer.join()
    assert released.is_set()
    assert point.tables["public.ledger"]["rows"] == 1001


def test_a_writer_that_never_lets_go_fails_the_capture_naming_it_and_records_nothing(db):
    with db.connect() as holder, db.connect() as conn:
        holder.execute("BEGIN")
        holder.execute("INSERT INTO ledger (amount) VALUES (7)")
        try:
            with pytest.raises(Exception, match=r"could not lock .* held by pid \d+") as raised:
                capture_restore_point(conn, "never", attempt_timeout="50ms", patience_seconds=1)
            assert "RestorePointError" in type(raised.value).__name__
        finally:
            holder.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM restore_points WHERE name = 'never'").fetchone()[0] == 0


def test_writers_are_not_held_while_the_checksums_are_computed(db):
    """Slow checksums (a sleep per row through a view-like function) must not block an insert meanwhile."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE slow (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO slow SELECT g, 'x' FROM generate_series(1, 40) g")
    inserted_at: list[float] = []
    capture_done: list[float] = []

    def capture() -> None:
        with db.connect() as conn:
            # pg_sleep inside the checksum's row text: 40 rows x 0.05 s = 2 s of checksumming.
            conn.execute(
                "CREATE OR REPLACE FUNCTION slow_text(s slow) RETURNS text LANGUAGE sql AS "
                "$$ SELECT pg_sleep(0.05)::text || $1.v $$"
            )
            conn.execute("CREATE CAST (slow AS text) WITH FUNCTION slow_text(slow)")
            capture_restore_point(conn, "slow-checksums")
            capture_done.append(time.monotonic())

    thread = threading.Thread(target=capture)
    thread.start()
    time.sleep(0.8)
    with db.connect() as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.execute("INSERT INTO ledger (amount) VALUES (1)")
        inserted_at.append(time.monotonic())
    thread.join()
    assert capture_done and inserted_at
    # The insert went through while the checksums were still running, not after the capture committed.
    assert inserted_at[0] < capture_done[0]


def test_the_captured_checksums_are_the_state_at_the_point_even_with_writers_running(db):
    """Writers commit continuously during the capture; the recorded values equal a recomputation on the
    snapshot the restore point was written under (counted here by id: rows with id <= the max seen)."""
    stop = threading.Event()

    def writer() -> None:
        with db.connect() as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO ledger (amount) VALUES (1)")

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        with db.connect() as conn:
            point = capture_restore_point(conn, "under-load")
    finally:
        stop.set()
        for t in threads:
            t.join()
    with db.connect() as conn:
        recorded = point.tables["public.ledger"]
        max_id = conn.execute(
            "SELECT max(id) FROM (SELECT id FROM ledger ORDER BY id LIMIT %s) AS first_rows", [recorded["rows"]]
        ).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM ledger WHERE id <= %s", [max_id]).fetchone()[0] == recorded["rows"]
        assert table_checksums(conn, ["public.ledger"])["public.ledger"]["rows"] >= recorded["rows"]
