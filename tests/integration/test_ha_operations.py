"""The HA asset, its checks, the switchover and reinit jobs, the CLI and the timeline sensor on a real cluster.

Nothing here assumes which node leads when a test starts (other modules fail over the same cluster), and every
test leaves it healthy: one leader and two replicas streaming from it on its timeline.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import dagster as dg
import jsonschema
import pytest

from assets import ha as ha_assets
from cqox_platform.cli.json_schema import load_schema
from cqox_platform.ha import operations
from cqox_platform.ha.cluster_checks import UP_STATES, Observation
from cqox_platform.ha.patroni_client import PatroniClient
from cqox_platform.ha.replication import read_endpoint
from cqox_platform.pgserver import PG_OS_USER
from cqox_platform.resources.patroni import PatroniResource
from cqox_platform.schema import MigrationRunner
from cqox_platform.stack.patroni import PG_BIN_DIR
from sensors.ha_sensors import timeline_change_sensor
from tests.helpers import postgres_admin

CLI = [sys.executable, "-m", "cqox_platform.cli"]
HEALTHY_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def ha(ha_stack):
    with mock.patch.dict(os.environ, ha_stack.env()):
        with postgres_admin(ha_stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)  # audit_log
        yield ha_stack


def _client(stack) -> PatroniClient:
    return stack.service("patroni").client()


def _patroni(stack) -> PatroniResource:
    env = stack.env()
    return PatroniResource(
        urls=env["CQOX_PATRONI_URLS"],
        cacert=env["CQOX_PATRONI_CACERT"],
        username=env["CQOX_PATRONI_USER"],
        password_file=env["CQOX_PATRONI_PASSWORD_FILE"],
    )


def _resources(stack) -> dict:
    return {"patroni": _patroni(stack), "postgres_admin": postgres_admin(stack)}


def _connect(stack):
    admin = postgres_admin(stack)
    return lambda: admin.connect(autocommit=True)


def _wait_healthy(stack, timeout: float = HEALTHY_TIMEOUT) -> None:
    client = _client(stack)

    def probe() -> tuple[bool, str]:
        state = client.cluster()
        if state.leader is None or len(state.members) != 3:
            return False, f"leader {state.leader}, {len(state.members)} members"
        seen = [operations.replica_caught_up(client, state, m.name) for m in state.replicas]
        return all(done for done, _ in seen), "; ".join(s for _, s in seen)

    operations.wait_for(probe, what="one leader and two streaming replicas", timeout=timeout)


@pytest.fixture(autouse=True)
def healthy_cluster(ha):
    """Start from a healthy cluster and leave one behind, whatever the test did to it."""
    _wait_healthy(ha)
    yield
    _wait_healthy(ha)


def _status(stack, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [ha_assets.postgres_cluster_status],
        resources=_resources(stack),
        run_config={"ops": {"postgres_cluster_status": {"config": config}}},
        raise_on_error=False,
    )


def _checks(result) -> dict[str, tuple[bool, str]]:
    return {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}


def _meta(result) -> dict:
    (event,) = result.asset_materializations_for_node("postgres_cluster_status")
    return {k: v.value for k, v in event.metadata.items()}


def _last_audit_id(stack) -> int:
    with postgres_admin(stack).connect(autocommit=True) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM audit_log").fetchone()[0]


def _audit_since(stack, action: str, after_id: int) -> list[tuple[str, str, dict]]:
    with postgres_admin(stack).connect(autocommit=True) as conn:
        return conn.execute(
            "SELECT user_id, resource, details FROM audit_log WHERE action = %s AND id > %s ORDER BY id",
            (action, after_id),
        ).fetchall()


def _failure_message(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.step_failure_data
    return str(data.user_failure_data.description if data.user_failure_data else data.error.message)


def _a_replica(stack) -> str:
    return sorted(m.name for m in _client(stack).cluster().replicas)[0]


def _node(stack, name: str):
    return next(n for n in stack.service("patroni").nodes if n.name == name)


def _cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.env()}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)


# --- the status asset and its checks -------------------------------------------------------------------------


def test_status_asset_reports_the_cluster_and_every_check_passes_when_healthy(ha):
    state = _client(ha).cluster()
    result = _status(ha)
    assert result.success
    checks = _checks(result)
    assert set(checks) == {
        "exactly_one_leader",
        "replicas_streaming",
        "replication_lag_within_bound",
        "sync_standby_present_when_sync_mode",
    }
    assert all(passed for passed, _ in checks.values()), checks
    assert "asynchronous" in checks["sync_standby_present_when_sync_mode"][1]
    meta = _meta(result)
    assert meta["leader"] == state.leader
    assert meta["timeline"] == state.timeline
    assert meta["sync_mode"] is False
    assert set(meta["replica_lag_bytes"]) == {m.name for m in state.replicas}
    members = {r.data["member"]: r.data for r in meta["members"].records}
    assert {name: row["role"] for name, row in members.items()} == {m.name: m.role for m in state.members}
    for replica in state.replicas:
        assert members[replica.name]["streaming"] == "streaming"
        assert isinstance(members[replica.name]["lag (bytes)"], int)
    assert members[state.leader]["lag (bytes)"] is None
    assert meta["lag_history"].startswith("![lag](data:image/svg+xml;base64,")


def _startup_pid(node) -> int:
    """The replica's startup process: the one that replays WAL (the walreceiver is another)."""
    postmaster = node.postmaster_pid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat, cmdline = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster and b"startup" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no startup process under {node.name}'s postmaster {postmaster}")


def test_lag_check_fails_when_a_replica_stops_replaying_under_writes(ha):
    replica = _a_replica(ha)
    admin = postgres_admin(ha)

    def behind() -> tuple[bool, str]:
        with admin.connect(autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS ha_lag_probe (id bigserial PRIMARY KEY, body text)")
            conn.execute("INSERT INTO ha_lag_probe (body) SELECT md5(g::text) FROM generate_series(1, 2000) g")
            _, rows = read_endpoint(conn)
        lag = next((r.replay_lag_bytes for r in rows if r.name == replica), None)
        return bool(lag), f"{lag} bytes behind"

    # Replay stopped by freezing the startup process: WAL is still received and acknowledged, but not replayed.
    # (pg_wal_replay_pause() would not hold: Patroni resumes paused replay on PostgreSQL 14+ within a loop.)
    startup = _startup_pid(_node(ha, replica))
    os.kill(startup, signal.SIGSTOP)
    try:
        operations.wait_for(behind, what=f"{replica} to fall behind", timeout=60)
        strict = _status(ha, max_lag_bytes=0)
        default = _status(ha)
    finally:
        os.kill(startup, signal.SIGCONT)
    checks = _checks(strict)
    passed, description = checks["replication_lag_within_bound"]
    assert not passed
    assert f"{replica} is " in description and "bytes behind" in description and "bound 0 bytes" in description
    assert _meta(strict)["replica_lag_bytes"][replica] > 0
    # A replica that does not replay still streams, and a few hundred KiB are far inside the default bound.
    assert checks["replicas_streaming"][0] and checks["exactly_one_leader"][0]
    assert _checks(default)["replication_lag_within_bound"][0]


def test_sync_check_requires_a_synchronous_standby_in_sync_mode(ha):
    client = _client(ha)
    admin = postgres_admin(ha)

    def synchronous() -> tuple[bool, str]:
        with admin.connect(autocommit=True) as conn:
            endpoint, rows = read_endpoint(conn)
        obs = Observation(cluster=client.cluster(), sync_mode=True, endpoint=endpoint, replication=rows)
        return bool(obs.sync_standbys), f"sync standbys {obs.sync_standbys}"

    client.patch_config({"synchronous_mode": True})
    try:
        operations.wait_for(synchronous, what="a synchronous standby", timeout=60)
        result = _status(ha)
    finally:
        client.patch_config({"synchronous_mode": False})
        operations.wait_for(
            lambda: (not any(m.role == "sync_standby" for m in client.cluster().members), "sync standby left"),
            what="asynchronous replication again",
            timeout=60,
        )
    passed, description = _checks(result)["sync_standby_present_when_sync_mode"]
    meta = _meta(result)
    assert passed and meta["sync_mode"] is True
    (standby,) = meta["sync_standbys"]
    assert f"{standby} is the synchronous standby" in description


def _break(stack, name: str) -> None:
    """A replica that cannot start again by itself: its pg_control gone, then an immediate stop."""
    node = _node(stack, name)
    (node.data_dir / "global" / "pg_control").unlink()
    stop = [f"{PG_BIN_DIR}/pg_ctl", "-D", str(node.data_dir), "stop", "-m", "immediate"]
    if os.geteuid() == 0:
        stop = ["runuser", "-u", PG_OS_USER, "--", *stop]
    subprocess.run(stop, check=True, capture_output=True, timeout=60)


def test_broken_replica_fails_the_streaming_check_and_the_reinit_job_repairs_it(ha):
    client = _client(ha)
    replica = _a_replica(ha)
    before = _last_audit_id(ha)
    _break(ha, replica)
    try:

        def seen_broken() -> tuple[bool, str]:
            state = client.cluster()
            member = state.member(replica)
            patroni_state = member.state if member else "not registered"
            down = patroni_state not in UP_STATES and not operations.replica_caught_up(client, state, replica)[0]
            return down, patroni_state

        operations.wait_for(seen_broken, what=f"Patroni to see {replica} broken", timeout=60)
        broken = _status(ha)
        passed, description = _checks(broken)["replicas_streaming"]
        assert not passed
        assert f"{replica} is not connected to the leader" in description
        assert _checks(broken)["exactly_one_leader"][0]

        result = ha_assets.ha_reinit_job.execute_in_process(
            run_config={"ops": {"ha_reinit": {"config": {"member": replica}}}},
            resources=_resources(ha),
            raise_on_error=False,
        )
        assert result.success, _failure_message(result)
    finally:
        if not operations.replica_caught_up(client, client.cluster(), replica)[0]:
            client.reinitialize(replica)  # whatever failed above, do not leave a broken member behind
    state = client.cluster()
    assert operations.replica_caught_up(client, state, replica)[0]
    ((who, resource, details),) = _audit_since(ha, "ha.reinit", before)
    assert (who, resource) == (result.run_id, replica)
    assert details["outcome"] == "succeeded" and details["via"] == "dagster"
    assert details["state_before"] not in UP_STATES
    assert details["timeline_after"] == state.timeline and details["seconds"] > 0
    assert all(passed for passed, _ in _checks(_status(ha)).values())


# --- switchover ----------------------------------------------------------------------------------------------


def test_switchover_job_moves_leadership_and_records_it(ha):
    client = _client(ha)
    start = client.cluster()
    candidate = _a_replica(ha)
    before = _last_audit_id(ha)
    result = ha_assets.ha_switchover_job.execute_in_process(
        run_config={"ops": {"ha_switchover": {"config": {"candidate": candidate}}}},
        resources=_resources(ha),
        raise_on_error=False,
    )
    assert result.success, _failure_message(result)
    after = client.cluster()
    assert after.leader == candidate
    assert after.timeline > start.timeline
    # Done means the old leader already streams from the new one, not merely that the key moved.
    assert operations.replica_caught_up(client, after, start.leader)[0]
    ((who, resource, details),) = _audit_since(ha, "ha.switchover", before)
    assert (who, resource) == (result.run_id, candidate)
    assert details["from"] == start.leader and details["to"] == candidate
    assert details["timeline_before"] == start.timeline and details["timeline_after"] == after.timeline
    assert details["outcome"] == "succeeded" and details["seconds"] > 0


def test_switchover_to_a_non_member_fails_clearly_and_is_audited_as_failed(ha):
    client = _client(ha)
    leader = client.cluster().leader
    before = _last_audit_id(ha)
    result = ha_assets.ha_switchover_job.execute_in_process(
        run_config={"ops": {"ha_switchover": {"config": {"candidate": "node9"}}}},
        resources=_resources(ha),
        raise_on_error=False,
    )
    assert not result.success
    message = _failure_message(result)
    assert "node9 is not a member of the cluster (node1, node2, node3)" in message
    ((who, resource, details),) = _audit_since(ha, "ha.switchover", before)
    assert (who, resource) == (result.run_id, "node9")
    assert details["outcome"] == "failed" and "node9 is not a member" in details["error"]
    assert details["from"] == leader and details["to"] == "node9"
    assert client.cluster().leader == leader


def _valid(command: str, result: subprocess.CompletedProcess) -> dict:
    document = json.loads(result.stdout)
    jsonschema.Draft202012Validator(load_schema(command), format_checker=jsonschema.FormatChecker()).validate(document)
    return document


def test_ha_status_and_stack_status_json_validate_and_show_the_leader(ha):
    state = _client(ha).cluster()
    status = _cli(ha, "ha", "status", "--json")
    assert status.returncode == 0, status.stderr
    cluster = _valid("ha-status", status)
    assert cluster["healthy"] is True and cluster["error"] is None and cluster["missing"] == []
    assert (cluster["leader"], cluster["timeline"]) == (state.leader, state.timeline)
    assert sorted(m["name"] for m in cluster["members"]) == ["node1", "node2", "node3"]

    stacked = _cli(ha, "stack", "status", "--json", "--dir", str(ha.config.root))
    assert stacked.returncode == 0, stacked.stderr
    report = _valid("stack-status", stacked)
    assert report["healthy"] is True and report["ha"]["cluster"]["leader"] == state.leader
    assert report["ha"]["haproxy"]["postgres_primary"] == [state.leader]


def test_cli_status_switchover_and_reinit_audit_the_os_user(ha):
    status = _cli(ha, "ha", "status")
    assert status.returncode == 0, status.stderr
    state = _client(ha).cluster()
    for member in state.members:
        assert member.name in status.stdout
    assert f"timeline {state.timeline}" in status.stdout

    candidate = _a_replica(ha)
    before = _last_audit_id(ha)
    moved = _cli(ha, "ha", "switchover", "--to", candidate)
    assert moved.returncode == 0, moved.stderr
    assert f"ha.switchover {candidate}: succeeded" in moved.stdout
    assert _client(ha).cluster().leader == candidate
    ((who, _, details),) = _audit_since(ha, "ha.switchover", before)
    assert who == getpass.getuser() and details["via"] == "cli" and details["outcome"] == "succeeded"

    refused = _cli(ha, "ha", "switchover", "--to", "node9")
    assert refused.returncode == 1
    assert "error: ha.switchover node9 failed: node9 is not a member" in refused.stderr
    assert [d["outcome"] for _, _, d in _audit_since(ha, "ha.switchover", before)] == ["succeeded", "failed"]

    replica = _a_replica(ha)
    recloned = _cli(ha, "ha", "reinit", replica)
    assert recloned.returncode == 0, recloned.stderr
    assert f"ha.reinit {replica}: succeeded" in recloned.stdout
    ((who, resource, details),) = _audit_since(ha, "ha.reinit", before)
    assert (who, resource, details["via"], details["outcome"]) == (getpass.getuser(), replica, "cli", "succeeded")


# --- timeline sensor -----------------------------------------------------------------------------------------


def test_timeline_sensor_records_first_then_requests_a_backup_per_new_timeline(ha):
    instance = dg.DagsterInstance.ephemeral()
    resources = {"patroni": _patroni(ha)}
    first = dg.build_sensor_context(instance=instance, resources=resources)
    skipped = timeline_change_sensor(first)
    timeline = _client(ha).cluster().timeline
    with _connect(ha)() as conn:  # the cluster's own answer, not Patroni's
        system_id = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    assert isinstance(skipped, dg.SkipReason) and f"timeline {timeline}" in skipped.skip_message
    assert first.cursor == f"{system_id}:{timeline}"

    operations.switchover(_client(ha), _a_replica(ha), who="pytest", via="test", connect=_connect(ha))
    new_timeline = _client(ha).cluster().timeline
    assert new_timeline > timeline

    second = dg.build_sensor_context(cursor=first.cursor, instance=instance, resources=resources)
    request = timeline_change_sensor(second)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"timeline:{system_id}:{new_timeline}"
    assert request.tags["cqox/timeline_from"] == str(timeline)
    assert request.tags["cqox/timeline_to"] == str(new_timeline)
    assert second.cursor == f"{system_id}:{new_timeline}"

    third = dg.build_sensor_context(cursor=second.cursor, instance=instance, resources=resources)
    assert isinstance(timeline_change_sensor(third), dg.SkipReason)
