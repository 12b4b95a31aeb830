"""Which SQL dialect a database gets: TimescaleDB when the extension is available, plain PostgreSQL otherwise."""

from __future__ import annotations

from enum import StrEnum

import psycopg


class Dialect(StrEnum):
    TIMESCALEDB = "timescaledb"
    PLAIN = "plain"


def detect_dialect(conn: psycopg.Connection) -> Dialect:
    """TimescaleDB if the server can load it (installed or available), plain PostgreSQL otherwise."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')").fetchone()
    return Dialect.TIMESCALEDB if row and row[0] else Dialect.PLAIN
