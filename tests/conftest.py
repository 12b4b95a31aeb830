"""Fixtures: one real local stack per test session, a fresh database per test, PGlite-TimescaleDB on demand.

The stack lives in a world-traversable temporary directory (the postgres OS user must reach its data
directory) with ports the kernel picked, so tests never collide with a developer's running `.cqox` stack.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.schema import Dialect
from cqox_platform.stack import Stack
from cqox_platform.stack.pglite import PGliteServer
from tests.helpers import running_stack

#: The xdist group of every test that uses the HA stack: one worker starts it, and runs those tests in order.
HA_GROUP = "ha-stack"


@pytest.hookimpl(tryfirst=True)  # xdist turns the marker into its group suffix in this same hook
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``scripts/test.sh`` runs ``-n 2 --dist loadgroup``) a module's tests stay on one worker,
    so its module fixtures are built once. The tests using the HA stack (three Patroni nodes) share one group, so
    only one worker starts it and the failover tests run in the order they are written; in a module that mixes
    both (the alert drills), only its HA tests join that group, so the slow alert tests are not all queued behind
    one worker. Each worker starts its own session stack (free ports, its own directory)."""
    ha_slots = []
    for index, item in enumerate(items):
        uses_ha = "ha_stack" in getattr(item, "fixturenames", ())
        group = HA_GROUP if uses_ha else str(item.path.relative_to(item.config.rootpath))
        item.add_marker(pytest.mark.xdist_group(group))
        if uses_ha:
            ha_slots.append(index)
    # Tests marked ``ha_stack_first`` run before the other HA tests (stable otherwise), in the HA tests' own slots.
    ha_items = sorted((items[i] for i in ha_slots), key=lambda it: it.get_closest_marker("ha_stack_first") is None)
    for index, item in zip(ha_slots, ha_items, strict=True):
        items[index] = item


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack("cqox-test-stack-", with_dagster=True) as st:
        yield st


@pytest.fixture(scope="session")
def ha_stack() -> Iterator[Stack]:
    """A second stack with the Patroni cluster (`stack up --ha`), asynchronous replication, no Dagster.

    Tests that need synchronous mode switch it on through Patroni's dynamic configuration and off again.
    """
    with running_stack("cqox-test-ha-stack-", with_dagster=False, ha=True) as st:
        yield st


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> dict[str, str]:
    """The process environment with `cqox-platform stack env` applied, for subprocesses."""
    return {**os.environ, **stack.env()}


@dataclass
class TestDatabase:
    """A database under test and how to reach it."""

    dialect: Dialect
    resource: PostgresResource

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(**self.resource.conninfo(), autocommit=True)
        conn.prepare_threshold = self.resource.prepare_threshold
        return conn


def _stack_resource(stack: Stack, dbname: str) -> PostgresResource:
    env = stack.env()
    return PostgresResource(
        host=env["CQOX_PG_HOST"],
        port=int(env["CQOX_PG_PORT"]),
        dbname=dbname,
        user=env["CQOX_PG_USER"],
        sslrootcert=env["CQOX_PG_SSLROOTCERT"],
        passfile=env["CQOX_PG_PASSFILE"],
    )


@pytest.fixture
def plain_db(stack: Stack) -> Iterator[TestDatabase]:
    """A fresh, empty database on the stack's PostgreSQL 15 (plain dialect), dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    admin = _stack_resource(stack, "postgres")
    with psycopg.connect(**admin.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield TestDatabase(Dialect.PLAIN, _stack_resource(stack, name))
    finally:
        with psycopg.connect(**admin.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def timescale_db(tmp_path: Path) -> Iterator[TestDatabase]:
    """A fresh PGlite-TimescaleDB server (TimescaleDB 2.23 on PostgreSQL 17) with an empty data directory."""
    server = PGliteServer(data_dir=tmp_path / "pglite-data", log_path=tmp_path / "pglite.log").start()
    try:
        info = server.conninfo()
        resource = PostgresResource(
            host=str(info["host"]),
            port=int(info["port"]),
            dbname="postgres",
            user="postgres",
            sslmode="disable",
            prepare_threshold=None,
        )
        yield TestDatabase(Dialect.TIMESCALEDB, resource)
    finally:
        server.stop()


@pytest.fixture(params=["plain", "timescaledb"])
def any_db(request: pytest.FixtureRequest) -> TestDatabase:
    """Each dialect in turn: the same test must pass on both."""
    return request.getfixturevalue(f"{request.param}_db" if request.param == "plain" else "timescale_db")
