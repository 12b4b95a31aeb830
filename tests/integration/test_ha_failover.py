"""Failover and partition of the Patroni cluster, for real: kill -9 of the leader's postmaster, synchronous mode
with a writer that records every acknowledged insert, WAL archiving and a restore drill across the timeline
switch, and a leader cut off from etcd while a probe checks that two nodes never accept writes.

One HA stack (`ha_stack`) for the module; every test leaves it with one leader and two streaming replicas.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from unittest import mock

import psycopg
import pytest

from assets import backups as backup_assets
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.ha.partition import heal, partitioned_from_etcd
from cqox_platform.schema import MigrationRunner
from tests.helpers import (
    asset_metadata,
    backup_resources,
    check_results,
    materialize_backups,
    materialize_vault_config,
    postgres_admin,
    s3_client,
    wait_healthy,
)

#: The roadmap's bound for a failover.
FAILOVER_BOUND = 30.0


@pytest.fixture(scope="module")
def env(ha_stack):
    with mock.patch.dict(os.environ, ha_stack.env()):
        assert materialize_vault_config(ha_stack).success
        with postgres_admin(ha_stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
            conn.execute("CREATE TABLE IF NOT EXISTS acked_writes (id bigint PRIMARY KEY, at timestamptz)")
        yield ha_stack.env()


@pytest.fixture(scope="module")
def backup_before_failover(ha_stack, env):
    """A base backup on the first timeline, which the drill after the failovers restores from."""
    with mock.patch.dict(os.environ, env):
        result = materialize_backups(ha_stack, env, [backup_assets.postgres_basebackup])
    assert result.success
    return asset_metadata(result, "postgres_basebackup")["backup_id"]


def _cluster(stack):
    return stack.service("patroni").client().cluster()


def _wait_timeline(stack, timeline: int, timeout: float = 30.0):
    """Patroni's view once the new leader has published its timeline (one loop after the promotion)."""
    deadline = time.monotonic() + timeout
    while True:
        state = _cluster(stack)
        if state.timeline is not None and state.timeline >= timeline:
            return state
        assert time.monotonic() < deadline, f"timeline {timeline} not reached: {state}"
        time.sleep(0.5)


def _reach_timeline(stack, timeline: int) -> int:
    """The cluster on ``timeline`` or later: planned switchovers to a replica until it is there."""
    state = wait_healthy(stack)
    while state.timeline is None or state.timeline < timeline:
        candidate = next(m.name for m in state.members if m.name != state.leader and m.state == "streaming")
        stack.service("patroni").client().switchover(candidate)
        _wait_timeline(stack, (state.timeline or 0) + 1, timeout=120)
        state = wait_healthy(stack)
    return state.timeline


def _node(stack, name):
    return next(n for n in stack.service("patroni").nodes if n.name == name)


def _node_conninfo(stack, node) -> dict:
    return {**stack.service("postgres").conninfo(), "port": node.pg_port, "connect_timeout": 2}


def _write_through_haproxy(stack, row_id: int) -> None:
    with psycopg.connect(**{**stack.service("postgres").conninfo(), "connect_timeout": 2}, autocommit=True) as conn:
        conn.execute("INSERT INTO acked_writes VALUES (%s, now())", (row_id,))


def _kill_leader(stack):
    state = wait_healthy(stack)
    leader = _node(stack, state.leader)
    pid = leader.postmaster_pid()
    assert pid is not None, f"{leader.name} runs no postmaster"
    os.kill(pid, signal.SIGKILL)
    return state, leader, time.monotonic()


def _wait_for_writes(stack, start: float, row_id: int) -> float:
    """Seconds from ``start`` until an insert through HAProxy succeeds."""
    while time.monotonic() - start < 120:
        try:
            _write_through_haproxy(stack, row_id)
            return time.monotonic() - start
        except psycopg.Error:
            time.sleep(0.2)
    raise AssertionError("no leader accepted writes within 120 s")


def test_kill_9_of_the_leader_promotes_a_replica_and_resources_reconnect(ha_stack, env, backup_before_failover):
    resource = postgres_admin(ha_stack)
    with resource.connection() as conn:  # a pooled connection to the leader that is about to die
        assert conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)
    before, old_leader, killed_at = _kill_leader(ha_stack)
    seconds = _wait_for_writes(ha_stack, killed_at, 1_000_000 + before.timeline)
    assert seconds < FAILOVER_BOUND, f"failover took {seconds:.1f} s"
    after = _wait_timeline(ha_stack, before.timeline + 1)
    assert after.leader not in (None, old_leader.name)
    # The same resource, no one touching it: its pool drops the dead connection and reaches the new leader.
    with resource.connection() as conn:
        assert conn.execute("SELECT NOT pg_is_in_recovery(), inet_server_port()").fetchone() == (
            True,
            _node(ha_stack, after.leader).pg_port,
        )
    resource.teardown_after_execution(mock.MagicMock())
    # The old leader comes back as a replica of the new one.
    healed = wait_healthy(ha_stack)
    assert healed.member(old_leader.name).role in ("replica", "sync_standby")


def test_synchronous_mode_loses_no_acknowledged_write_in_a_failover(ha_stack, env):
    client = ha_stack.service("patroni").client()
    client.patch_config({"synchronous_mode": True})
    try:
        deadline = time.monotonic() + 60
        while not any(m.role == "sync_standby" for m in _cluster(ha_stack).members):
            assert time.monotonic() < deadline, "no synchronous standby appeared"
            time.sleep(0.5)
        acked: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def writer() -> None:
            row_id = 2_000_000
            conn = None
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = psycopg.connect(
                            **{**ha_stack.service("postgres").conninfo(), "connect_timeout": 2}, autocommit=True
                        )
                    conn.execute("INSERT INTO acked_writes VALUES (%s, now())", (row_id,))
                    acked.append(row_id)  # only once COMMIT returned: the server acknowledged it
                    row_id += 1
                except psycopg.Error as exc:
                    errors.append(type(exc).__name__)
                    row_id += 1  # an unacknowledged id may or may not exist; never reuse it
                    conn = None
                    time.sleep(0.05)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(2)
        before, _old_leader, killed_at = _kill_leader(ha_stack)
        seconds = _wait_for_writes(ha_stack, killed_at, 2_999_000 + before.timeline)
        acked_at_failover = len(acked)
        time.sleep(3)  # keep writing on the new leader
        stop.set()
        thread.join(timeout=30)
        assert seconds < FAILOVER_BOUND
        assert errors, "the writer never saw the failover"
        assert len(acked) > acked_at_failover > 0
        with postgres_admin(ha_stack).connect(autocommit=True) as conn:
            present = {
                row[0]
                for row in conn.execute("SELECT id FROM acked_writes WHERE id >= 2000000 AND id < 2999000").fetchall()
            }
        lost = sorted(set(acked) - present)
        assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    finally:
        client.patch_config({"synchronous_mode": False})
    wait_healthy(ha_stack)


def test_partitioned_leader_demotes_and_two_nodes_never_accept_writes(ha_stack, env):
    state = wait_healthy(ha_stack)
    leader = _node(ha_stack, state.leader)
    nodes = ha_stack.service("patroni").nodes
    rounds: list[dict[str, bool]] = []
    stop = threading.Event()

    def writable(node) -> bool:
        try:
            with psycopg.connect(**_node_conninfo(ha_stack, node), autocommit=True) as conn:
                conn.execute("SET statement_timeout = '1s'")
                return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]
        except psycopg.Error:
            return False

    def probe() -> None:
        while not stop.is_set():
            rounds.append({node.name: writable(node) for node in nodes})
            time.sleep(0.1)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    etcd_port = ha_stack.config.ports["etcd"]
    try:
        with partitioned_from_etcd(leader.index, etcd_port):
            deadline = time.monotonic() + 60
            demoted = new_leader = None
            while time.monotonic() < deadline and not (demoted and new_leader):
                latest = rounds[-1] if rounds else {}
                demoted = demoted or (latest and not latest[leader.name])
                new_leader = new_leader or next(
                    (name for name, ok in latest.items() if ok and name != leader.name), None
                )
                time.sleep(0.2)
            assert demoted, f"{leader.name} kept accepting writes while cut off from etcd"
            assert new_leader, "no other node was elected while the leader was cut off"
            time.sleep(3)
    finally:
        heal(etcd_port)
        stop.set()
        thread.join(timeout=30)
    both = [r for r in rounds if sum(r.values()) > 1]
    assert not both, f"two nodes accepted writes at once: {both[:3]}"
    assert any(r[leader.name] for r in rounds), "the probe never saw the original leader writable"
    healed = wait_healthy(ha_stack)
    assert healed.member(leader.name).role in ("replica", "sync_standby")


def test_archiving_continues_across_timelines_and_a_drill_after_the_failovers_passes(
    ha_stack, env, backup_before_failover
):
    # The failover tests above reach timeline 3; run alone (``-k archiving``), this test switches over itself.
    # Patroni publishes a new leader's timeline a loop after the promotion, so _wait_timeline polls.
    timeline = _reach_timeline(ha_stack, 3)
    with psycopg.connect(**ha_stack.service("postgres").conninfo(), autocommit=True) as conn:
        archive = cluster_archive(conn, s3_client(env), env["CQOX_S3_BUCKET"])
        conn.execute("CREATE TABLE IF NOT EXISTS after_failover (n int)")
        conn.execute("INSERT INTO after_failover SELECT generate_series(1, 1000)")
    archived = archive.archived_wal()
    for tl in range(2, timeline + 1):
        assert f"{tl:08X}.history" in archived, f"history file of timeline {tl} not archived"
    with mock.patch.dict(os.environ, env):
        status = materialize_backups(ha_stack, env, [backup_assets.wal_archive_status])
        checks = check_results(status)
        assert checks["wal_archive_continuous"], asset_metadata(status, "wal_archive_status")
        assert checks["wal_rpo_within_target"]
        # wal_archive_status captured a restore point on the newest timeline; drill the first timeline's backup
        # to it, through every history file.
        drill = materialize_backups(
            ha_stack,
            env,
            [backup_assets.restore_drill],
            config={"restore_drill": {"config": {"backup_id": backup_before_failover, "mode": "latest_point"}}},
        )
    drill_checks = check_results(drill)
    meta = asset_metadata(drill, "restore_drill")
    assert drill_checks["drill_passed"], meta
    assert meta["backup_id"] == backup_before_failover and meta["tables_checked"] >= 1
    assert meta["target"].startswith("restore_point check-")


def test_resources_config_is_the_single_endpoint(ha_stack, env):
    """Every client keeps one host and port in HA mode: HAProxy's, routed to the leader."""
    resources = backup_resources(ha_stack, env)
    assert str(resources["postgres_admin"].port) == env["CQOX_PG_PORT"]
    with resources["postgres_admin"].connect(autocommit=True) as conn:
        port = conn.execute("SELECT inet_server_port()").fetchone()[0]
    assert port == _node(ha_stack, _cluster(ha_stack).leader).pg_port


def test_no_secret_reaches_any_log_of_the_ha_stack(ha_stack, env):
    """Patroni's bootstrap sets role passwords in SQL; pgAudit and every log must still never show one."""
    secrets_dir = ha_stack.config.secrets_dir
    secrets = [
        (secrets_dir / name).read_text().strip()
        for name in (
            "postgres-password",
            "patroni-superuser-password",
            "patroni-replication-password",
            "patroni-rest-password",
        )
    ]
    logs = list(ha_stack.config.logs_dir.glob("*.log"))
    assert any("patroni-node" in log.name for log in logs)
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret appears in {log}"
