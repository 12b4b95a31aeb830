"""Which archive a live cluster writes to: its system identifier names the prefix, so two clusters never mix."""

from __future__ import annotations

from typing import Any

import psycopg

from cqox_platform.backup.archive.store import Archive


def system_id(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def cluster_archive(conn: psycopg.Connection, s3: Any, bucket: str) -> Archive:
    return Archive(s3, bucket, system_id(conn))
