"""The HA stack's pure parts: Patroni's cluster JSON, node configuration, HAProxy config, `--ha` on an old stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from cqox_platform.errors import StackDirError
from cqox_platform.ha.addresses import node_address
from cqox_platform.ha.patroni_client import parse_cluster
from cqox_platform.stack.certs import ensure_tls
from cqox_platform.stack.config import DEFAULT_PORTS, StackConfig
from cqox_platform.stack.haproxy import HaproxyService
from cqox_platform.stack.patroni import (
    CLUSTER_WIDE,
    LOOP_WAIT,
    RETRY_TIMEOUT,
    TTL,
    PatroniClusterService,
)
from cqox_platform.stack.postgres import server_settings

CLUSTER = {
    "members": [
        {
            "name": "node1",
            "role": "leader",
            "state": "running",
            "api_url": "https://127.0.0.1:1/patroni",
            "host": "127.0.0.1",
            "port": 5,
            "timeline": 4,
        },
        {
            "name": "node2",
            "role": "sync_standby",
            "state": "streaming",
            "api_url": "https://127.0.0.1:2/patroni",
            "host": "127.0.0.1",
            "port": 6,
            "timeline": 4,
            "lag": 0,
        },
        {
            "name": "node3",
            "role": "replica",
            "state": "starting",
            "api_url": "https://127.0.0.1:3/patroni",
            "lag": "unknown",
        },
    ],
    "pause": True,
}


def test_parse_cluster_types_members_and_finds_the_one_leader():
    state = parse_cluster(CLUSTER, "https://127.0.0.1:1")
    assert state.leader == "node1" and state.timeline == 4 and state.paused
    assert [m.name for m in state.replicas] == ["node2", "node3"]
    assert state.member("node2").lag == 0 and state.member("node3").lag is None
    assert state.member("node3").port is None and state.member("nodeX") is None


def test_two_leaders_or_none_mean_no_leader():
    two = {"members": [dict(CLUSTER["members"][0]), {**CLUSTER["members"][1], "role": "leader"}]}
    assert parse_cluster(two, "x").leader is None and parse_cluster(two, "x").timeline is None
    assert parse_cluster({"members": []}, "x").leader is None


def _config(tmp_path: Path, **kwargs) -> StackConfig:
    config = StackConfig(root=tmp_path, ports={n: 40000 + i for i, n in enumerate(DEFAULT_PORTS)}, **kwargs)
    ensure_tls(config.tls_dir)
    return config


def test_every_node_runs_the_single_nodes_settings(tmp_path):
    config = _config(tmp_path, ha=True, ha_sync=True)
    cluster = PatroniClusterService(config)
    single = server_settings(0, Path("."), "x")
    for node in cluster.nodes:
        conf = cluster.node_config(node)
        local, dcs = conf["postgresql"]["parameters"], conf["bootstrap"]["dcs"]
        merged = {**local, **dcs["postgresql"]["parameters"]}
        for key in ("ssl", "ssl_min_protocol_version", "password_encryption", "archive_mode", "wal_level"):
            assert str(merged[key]) == str(single[key]), key
        assert "wal-push %p" in local["archive_command"]
        assert set(CLUSTER_WIDE) <= set(dcs["postgresql"]["parameters"])
        assert local["pgaudit.log"] == single["pgaudit.log"]  # audited from bootstrap on
        assert dcs["synchronous_mode"] is True and dcs["primary_start_timeout"] == 0
        assert LOOP_WAIT + 2 * RETRY_TIMEOUT <= TTL == dcs["ttl"]
        assert conf["etcd3"]["hosts"] == [f"{node_address(node.index)}:{config.ports['etcd']}"]
        assert conf["etcd3"]["protocol"] == "https" and conf["etcd3"]["use_proxies"]
        for user in ("superuser", "replication"):
            assert conf["postgresql"]["authentication"][user]["sslmode"] == "verify-full"
        assert all(rule.split()[0] in ("local", "hostssl") for rule in conf["postgresql"]["pg_hba"])
        assert "--standby" in conf["postgresql"]["recovery_conf"]["restore_command"]


def test_patroni_restore_command_passes_its_paths_to_the_shell_quoted(tmp_path):
    """PostgreSQL runs restore_command with /bin/sh: a path with a space or a `;` must stay one argument."""
    import shlex

    root = tmp_path / "stack dir; touch owned"
    root.mkdir()
    cluster = PatroniClusterService(_config(root, ha=True))
    for node in cluster.nodes:
        command = cluster.node_config(node)["postgresql"]["recovery_conf"]["restore_command"]
        argv = shlex.split(command)
        assert argv[1:5] == ["wal-fetch", "%f", "%p", "--standby"], command
        assert argv[5:] == ["--config", str(cluster.base.archiver_settings)], command


def test_haproxy_routes_to_patroni_primary_checks_with_verified_tls(tmp_path):
    config = _config(tmp_path, ha=True)
    cluster = PatroniClusterService(config)
    proxy = HaproxyService(config, cluster)
    proxy.write_config()
    text = proxy.config_path.read_text()
    assert f"bind 127.0.0.1:{config.ports['postgres']}" in text
    assert "uri /primary" in text and "uri /replica" in text
    for node in cluster.nodes:
        assert f"server {node.name} 127.0.0.1:{node.pg_port} check port {node.rest_port}" in text
    assert text.count("verify required") == 2 * len(cluster.nodes)
    assert "on-marked-down shutdown-sessions" in text


def test_ha_on_a_single_node_stack_is_refused(tmp_path):
    StackConfig(root=tmp_path).save()
    with pytest.raises(StackDirError, match="single PostgreSQL node"):
        StackConfig.load(tmp_path, ha=True)
    assert StackConfig.load(tmp_path).ha is False
