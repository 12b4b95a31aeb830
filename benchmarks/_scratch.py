"""A throw-away database on the local stack's PostgreSQL, migrated, for benchmarks to write into."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from cqox_platform.schema import MigrationRunner


def _base_conninfo() -> dict[str, str]:
    if "CQOX_PG_DSN" not in os.environ:
        raise SystemExit('no stack environment: run `eval "$(cqox-platform stack env)"` after `stack up`.')
    return dict(psycopg.conninfo.conninfo_to_dict(os.environ["CQOX_PG_DSN"]))


@contextmanager
def scratch_database() -> Iterator[dict[str, str]]:
    """Create ``bench_<random>``, apply the migrations, yield its conninfo, drop it afterwards."""
    base = _base_conninfo()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**base, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = {**base, "dbname": name}
    try:
        with psycopg.connect(**info) as conn:
            MigrationRunner().migrate(conn)
        yield info
    finally:
        with psycopg.connect(**base, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
