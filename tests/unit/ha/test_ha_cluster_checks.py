"""The HA verdicts from observed states (no cluster needed), and the code location without a Patroni cluster."""

from __future__ import annotations

import dagster as dg
import pytest

from cqox_platform.ha.cluster_checks import (
    Endpoint,
    Observation,
    ReplicationRow,
    evaluate,
    exactly_one_leader,
    replicas_streaming,
    replication_lag_within_bound,
    sync_standby_present_when_sync_mode,
)
from cqox_platform.ha.patroni_client import parse_cluster
from cqox_platform.resources.patroni import NO_CLUSTER_MESSAGE, NoPatroniClusterError, PatroniResource

MIB = 1024 * 1024
PORTS = {"node1": 5441, "node2": 5442, "node3": 5443}


def _cluster(roles: dict[str, str], states: dict[str, str] | None = None, timeline: int = 3):
    members = [
        {
            "name": name,
            "role": role,
            "state": (states or {}).get(name, "running"),
            "api_url": f"https://127.0.0.1:1{PORTS[name]}/patroni",
            "host": "127.0.0.1",
            "port": PORTS[name],
            "timeline": timeline,
        }
        for name, role in roles.items()
    ]
    return parse_cluster({"members": members}, "https://127.0.0.1:15441")


def _row(name: str, state: str = "streaming", sync: str = "async", lag: int | None = 0) -> ReplicationRow:
    return ReplicationRow(name=name, state=state, sync_state=sync, replay_lag_bytes=lag)


def _healthy(**overrides) -> Observation:
    values = {
        "cluster": _cluster({"node1": "leader", "node2": "replica", "node3": "replica"}),
        "sync_mode": False,
        "endpoint": Endpoint(port=PORTS["node1"], in_recovery=False),
        "replication": [_row("node2"), _row("node3", lag=4096)],
    }
    values.update(overrides)
    return Observation(**values)


def test_healthy_cluster_passes_every_check():
    outcomes = evaluate(_healthy(), max_lag_bytes=16 * MIB, expected_members=3)
    assert [o.name for o in outcomes] == [
        "exactly_one_leader",
        "replicas_streaming",
        "replication_lag_within_bound",
        "sync_standby_present_when_sync_mode",
    ]
    assert all(o.passed for o in outcomes), [o.description for o in outcomes]
    assert "node1 leads timeline 3" in outcomes[0].description
    assert outcomes[2].metadata["max_lag_bytes"] == 4096
    assert "off" in outcomes[3].description


@pytest.mark.parametrize(
    ("roles", "endpoint", "expected"),
    [
        ({"node1": "replica", "node2": "replica", "node3": "replica"}, None, "0 leaders"),
        ({"node1": "leader", "node2": "leader", "node3": "replica"}, None, "2 leaders (node1, node2)"),
        ({"node1": "leader", "node2": "replica", "node3": "replica"}, Endpoint(PORTS["node1"], True), "in recovery"),
        ({"node1": "leader", "node2": "replica", "node3": "replica"}, Endpoint(PORTS["node2"], False), "two writable"),
    ],
)
def test_exactly_one_leader_fails_on_none_two_or_an_endpoint_elsewhere(roles, endpoint, expected):
    outcome = exactly_one_leader(_healthy(cluster=_cluster(roles), endpoint=endpoint))
    assert not outcome.passed
    assert expected in outcome.description


def test_replicas_streaming_trusts_the_leader_not_patroni():
    # Patroni says node3 runs, but the leader has no connection from it: not protecting anything.
    outcome = replicas_streaming(_healthy(replication=[_row("node2")]), expected_members=3)
    assert not outcome.passed
    assert "node3 is not connected to the leader (Patroni: running)" in outcome.description


def test_replicas_streaming_fails_on_catchup_a_broken_member_or_a_missing_one():
    catchup = replicas_streaming(_healthy(replication=[_row("node2"), _row("node3", state="catchup")]), 3)
    assert not catchup.passed and "node3 is catchup" in catchup.description
    broken = _cluster({"node1": "leader", "node2": "replica", "node3": "replica"}, {"node3": "start failed"})
    outcome = replicas_streaming(_healthy(cluster=broken, replication=[_row("node2")]), 3)
    assert not outcome.passed and "start failed" in outcome.description
    two = _cluster({"node1": "leader", "node2": "replica"})
    missing = replicas_streaming(_healthy(cluster=two, replication=[_row("node2")]), expected_members=3)
    assert not missing.passed and "only 2 of 3 members" in missing.description


def test_lag_bound_is_inclusive_and_unknown_lag_fails():
    obs = _healthy(replication=[_row("node2", lag=100), _row("node3", lag=101)])
    assert replication_lag_within_bound(obs, 101).passed
    over = replication_lag_within_bound(obs, 100)
    assert not over.passed
    assert "node3 is 101 bytes behind" in over.description and "node2" not in over.description
    unknown = replication_lag_within_bound(_healthy(replication=[_row("node2"), _row("node3", lag=None)]), MIB)
    assert not unknown.passed and "node3's lag is unknown" in unknown.description
    absent = replication_lag_within_bound(_healthy(replication=[_row("node2")]), MIB)
    assert not absent.passed and "node3" in absent.description


def test_sync_standby_needs_both_views_in_sync_mode():
    roles = {"node1": "leader", "node2": "sync_standby", "node3": "replica"}
    both = _healthy(cluster=_cluster(roles), sync_mode=True, replication=[_row("node2", sync="sync"), _row("node3")])
    outcome = sync_standby_present_when_sync_mode(both)
    assert outcome.passed and "node2 is the synchronous standby" in outcome.description
    # Patroni named one but the server does not (yet) treat it as synchronous: no guarantee.
    patroni_only = _healthy(cluster=_cluster(roles), sync_mode=True)
    failed = sync_standby_present_when_sync_mode(patroni_only)
    assert not failed.passed
    assert "Patroni sync_standby: ['node2']" in failed.description
    assert "pg_stat_replication sync: none" in failed.description
    none = sync_standby_present_when_sync_mode(_healthy(sync_mode=True))
    assert not none.passed


def test_resource_without_patroni_env_is_unconfigured_with_a_clear_message(monkeypatch):
    for name in ("CQOX_PATRONI_URLS", "CQOX_PATRONI_CACERT", "CQOX_PATRONI_USER", "CQOX_PATRONI_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    resource = PatroniResource.from_settings()
    assert not resource.configured
    with pytest.raises(NoPatroniClusterError, match="start it with `stack up --ha`"):
        resource.client()


def test_resource_refuses_to_talk_to_patroni_unverified():
    with pytest.raises(Exception, match="CQOX_PATRONI_CACERT is not set"):
        PatroniResource(urls="https://127.0.0.1:1").client()


def test_status_asset_fails_with_what_to_do_on_a_single_node_stack():
    from assets.ha import postgres_cluster_status
    from cqox_platform.resources.postgres import PostgresResource

    result = dg.materialize(
        [postgres_cluster_status],
        resources={"patroni": PatroniResource(), "postgres_admin": PostgresResource(host="127.0.0.1", port=1)},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert NO_CLUSTER_MESSAGE in str(failure.step_failure_data.user_failure_data.description)


def test_timeline_sensor_skips_without_a_cluster_and_when_patroni_is_unreachable(tmp_path):
    from sensors.ha_sensors import timeline_change_sensor

    alone = timeline_change_sensor(dg.build_sensor_context(resources={"patroni": PatroniResource()}))
    assert isinstance(alone, dg.SkipReason) and "no Patroni cluster" in alone.skip_message
    ca = tmp_path / "ca.crt"
    ca.write_text("")
    unreachable = PatroniResource(urls="https://127.0.0.1:9", cacert=str(ca), timeout=1)
    context = dg.build_sensor_context(cursor="4", resources={"patroni": unreachable})
    skipped = timeline_change_sensor(context)
    assert isinstance(skipped, dg.SkipReason)
    assert "Patroni is unreachable" in skipped.skip_message and "127.0.0.1:9" in skipped.skip_message
    assert context.cursor == "4"
