"""``--json`` on every command that reads state: the flag, a shipped schema, and output the schema accepts.

The walk over the assembled click app fails naming any read command without ``--json`` or without its schema, so a
new read command cannot be added without both (add it to ``READ_COMMANDS``). Commands that need live services are
validated through the function the command prints with, fed realistic values; ``stack status`` runs for real on a
stack directory where nothing runs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
from click.testing import CliRunner

from cqox_platform.backup.restore.workspace import RestoredCluster
from cqox_platform.backup.verify.proof import RestorePoint
from cqox_platform.canary.policy import POLICY_DIR, load_policy
from cqox_platform.canary.rollout import backtest
from cqox_platform.canary.store import Rollout
from cqox_platform.cli import alerts, backup, canary, datasets, ha, stack
from cqox_platform.cli.app import main
from cqox_platform.cli.json_schema import load_schema, schema_path
from cqox_platform.datasets.store import DatasetRow
from cqox_platform.ha.patroni_client import parse_cluster
from tests.helpers import backup_record

#: Every command that reads state (and the two whose result scripts act on). Its schema is
#: ``cli/schemas/<words joined by ->.schema.json``. `slo` has no read command (``slo backfill`` writes).
READ_COMMANDS = [
    ("backup", "list"),
    ("backup", "info"),
    ("backup", "create"),
    ("restore",),
    ("canary", "status"),
    ("canary", "backtest"),
    ("ha", "status"),
    ("stack", "status"),
    ("datasets", "list"),
    ("alerts", "received"),
    ("alerts", "silence", "list"),
]


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        found[(*path, name)] = command
        if isinstance(command, click.Group):
            found.update(_commands(command, (*path, name)))
    return found


def _validate(command: str, document: dict[str, Any]) -> None:
    schema = load_schema(command)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)


def test_every_read_command_has_json_and_a_shipped_schema() -> None:
    commands = _commands(main)
    lacking = []
    for path in READ_COMMANDS:
        command = commands.get(path)
        if command is None:
            lacking.append(f"`{' '.join(path)}` is not a command of cqox-platform any more")
            continue
        if not any("--json" in p.opts for p in command.params if isinstance(p, click.Option)):
            lacking.append(f"`{' '.join(path)}` has no --json")
        try:
            schema = json.loads(schema_path("-".join(path)).read_text())
        except FileNotFoundError as exc:
            lacking.append(f"`{' '.join(path)}`: {exc}")
            continue
        if "const" not in schema["properties"].get("schema_version", {}):
            lacking.append(f"`{' '.join(path)}`'s schema does not pin schema_version")
    assert lacking == []


def test_every_shipped_schema_belongs_to_a_read_command() -> None:
    """A schema left behind by a renamed command would be a promise nothing keeps."""
    shipped = {p.name.removesuffix(".schema.json") for p in schema_path("backup-list").parent.glob("*.schema.json")}
    assert shipped == {"-".join(path) for path in READ_COMMANDS}


# --- each command's JSON against its schema ----------------------------------------------------------------------

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def _rollout(**changes: Any) -> Rollout:
    values: dict[str, Any] = {
        "rollout_id": "cqox-engine-20261126T095000Z-1a2b",
        "service": "cqox-engine",
        "image": "registry.local/cqox-engine:1.4.1",
        "previous_image": "registry.local/cqox-engine:1.4.0",
        "policy_version": 3,
        "step_index": 1,
        "weight": 50,
        "failures": 0,
        "consecutive_holds": 1,
        "status": "progressing",
        "started_at": NOW,
        "updated_at": NOW,
        "last_decision_at": NOW,
        "last_decision": "hold",
        "last_reason": "canary 5xx ratio 0.011 > 0.01",
    }
    return Rollout(**{**values, **changes})


def test_alerts_received_json_validates_for_each_kind_of_record() -> None:
    records = [
        {
            "received_at": NOW.timestamp(),
            "kind": "pagerduty",
            "name": "events-v2",
            "routing_key_fingerprint": "sha256:1f2e",
            "event_action": "trigger",
            "dedup_key": "d41d8cd98f00b204",
            "body": {"event_action": "trigger", "payload": {"summary": "RPO above 1 h", "severity": "critical"}},
        },
        {"received_at": NOW.timestamp() + 1, "kind": "webhook", "name": "tickets", "body": {"alerts": []}},
        {
            "received_at": NOW.timestamp() + 2,
            "kind": "deadman",
            "name": "watchdog",
            "event_action": "trigger",
            "dedup_key": "deadman-watchdog",
            "body": {"summary": "no heartbeat", "last_heartbeat_at": NOW.timestamp(), "within": 175.0},
        },
    ]
    document = json.loads(json.dumps(alerts.received_json(records, NOW.timestamp() - 600)))
    _validate("alerts-received", document)
    assert [r["kind"] for r in document["received"]] == ["pagerduty", "webhook", "deadman"]


def test_alerts_silence_list_json_validates_alertmanagers_silences() -> None:
    silence = {
        "id": "9f2d7d3e-2b4c-4a55-8d0e-0c1f7c7b9d11",
        "status": {"state": "active"},
        "updatedAt": "2026-11-26T10:00:00.000Z",
        "comment": "S3 maintenance",
        "createdBy": "cqox-platform",
        "endsAt": "2026-11-26T12:00:00.000Z",
        "matchers": [{"isEqual": True, "isRegex": False, "name": "alertname", "value": "CqoxPostgresArchiverFailing"}],
        "startsAt": "2026-11-26T10:00:00.000Z",
    }
    _validate("alerts-silence-list", alerts.silences_json([silence], show_all=False))
    with pytest.raises(jsonschema.ValidationError):
        _validate("alerts-silence-list", alerts.silences_json([{**silence, "status": {"state": "gone"}}], False))


def test_canary_status_json_validates() -> None:
    fresh = _rollout(last_decision=None, last_reason=None, last_decision_at=None, previous_image=None, weight=10)
    document = canary.status_json([_rollout(), fresh])
    _validate("canary-status", document)
    assert document["rollouts"][0]["last_reason"] == "canary 5xx ratio 0.011 > 0.01"
    _validate("canary-status", canary.status_json([]))


def test_canary_backtest_json_validates() -> None:
    policy = load_policy(POLICY_DIR / "cqox-engine.yaml")

    def query(expr: str, at: float | None = None) -> list[dict]:
        # 5000 requests per interval, p99 300 ms, a canary error ratio that turns bad after two intervals
        if "increase(" in expr:
            return [{"value": [at, "5000"]}]
        if "histogram_quantile" in expr:
            return [{"value": [at, "0.3"]}]
        bad = 'version="canary"' in expr and at is not None and at > 1_000_000 + 2 * policy.interval_seconds
        return [{"value": [at, "0.2" if bad else "0.001"]}]

    end = 1_000_000 + 10 * policy.interval_seconds
    steps = backtest(policy, query, 1_000_000, end, budget_at=lambda _t: 0.9)
    document = canary.backtest_json("cqox-engine", policy, 1_000_000, end, steps)
    _validate("canary-backtest", document)
    assert document["outcome"] == "rolled_back" and document["steps"][-1]["action"] == "rollback"
    empty = canary.backtest_json("cqox-engine", policy, 1_000_000, 1_000_001, [])
    _validate("canary-backtest", empty)
    assert empty["outcome"] is None


CLUSTER = {
    "members": [
        {"name": "node1", "role": "leader", "state": "running", "api_url": "https://127.0.0.1:8008/patroni",
         "host": "127.0.0.1", "port": 5433, "timeline": 4},
        {"name": "node2", "role": "sync_standby", "state": "streaming", "api_url": "https://127.0.0.1:8009/patroni",
         "host": "127.0.0.1", "port": 5434, "timeline": 4, "lag": 0},
        {"name": "node3", "role": "replica", "state": "starting", "api_url": "https://127.0.0.1:8010/patroni",
         "lag": "unknown"},
    ],
}  # fmt: skip


def test_ha_status_json_validates_and_carries_the_exit_verdict() -> None:
    state = parse_cluster(CLUSTER, "https://127.0.0.1:8008")
    starting = ha.state_json(state, ["node1", "node2", "node3"], 3)
    _validate("ha-status", {"schema_version": ha.STATUS_SCHEMA_VERSION, **starting})
    assert starting["healthy"] is False and starting["leader"] == "node1" and starting["timeline"] == 4
    assert [m["lag_bytes"] for m in starting["members"]] == [None, 0, None]

    running = {
        "members": [{**m, "state": "running" if m["role"] == "leader" else "streaming"} for m in CLUSTER["members"]]
    }
    assert ha.state_json(parse_cluster(running, "x"), ["node1", "node2", "node3"], 3)["healthy"] is True
    one_gone = ha.state_json(parse_cluster({"members": running["members"][:2]}, "x"), [], 3)
    assert one_gone["healthy"] is False and one_gone["missing"] == ["1 unnamed"]
    named_gone = ha.state_json(parse_cluster({"members": running["members"][:2]}, "x"), ["node1", "node2", "node3"], 3)
    assert named_gone["missing"] == ["node3"]


def test_stack_status_json_on_a_stack_where_nothing_runs_validates_and_exits_3(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["stack", "status", "--json", "--dir", str(tmp_path / "stack")])
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    _validate("stack-status", document)
    assert document["healthy"] is False and document["ha"] is None
    assert document["services"] and {s["state"] for s in document["services"]} == {"stopped"}


def test_stack_status_json_of_an_ha_stack_validates() -> None:
    from cqox_platform.stack.service import ServiceStatus

    statuses = [
        ServiceStatus("patroni", "running", 8008, 4242, "https://127.0.0.1:8008", Path("/srv/cqox/logs/patroni.log")),
        ServiceStatus("postgres", "running", 5432, 4243, "postgresql://127.0.0.1:5432", Path("/srv/cqox/pg.log")),
    ]
    cluster = ha.state_json(parse_cluster(CLUSTER, "https://127.0.0.1:8008"), ["node1", "node2", "node3"], 3)
    ha_part = {"cluster": cluster, "haproxy": {"postgres_primary": ["node1"], "postgres_replicas": ["node2"]},
               "haproxy_error": None}  # fmt: skip
    document = stack.status_json(statuses, ha_part)
    _validate("stack-status", document)
    assert document["healthy"] is False  # node3 is starting
    unreachable = ha.cluster_json(_Unanswered())
    _validate("stack-status", stack.status_json(statuses, {"cluster": unreachable, "haproxy": None,
                                                           "haproxy_error": "ConnectionRefusedError"}))  # fmt: skip
    _validate("ha-status", {"schema_version": ha.STATUS_SCHEMA_VERSION, **unreachable})
    assert unreachable["healthy"] is False and "refused" in unreachable["error"]


class _Unanswered:
    """A Patroni client no member of which answers, as ``PatroniClient.cluster`` reports it."""

    urls = ["https://127.0.0.1:8008"]

    def cluster(self):
        from cqox_platform.ha.patroni_client import PatroniError

        raise PatroniError("no Patroni member answered: https://127.0.0.1:8008: connection refused")


def test_datasets_list_json_validates() -> None:
    rows = [
        DatasetRow("0b6f3f1e-8a5c-4a8e-9d1e-0f2b7c1d9a11", "orders_2026_11", "ready", 120_000, 14, NOW,
                   "cqox-datasets", 2, "9f" * 32),
        DatasetRow("5d0c2a8e-1111-4b2c-8e3d-2a9b8c7d6e5f", "orders_2026_12", "failed", None, None, NOW,
                   None, None, None),
    ]  # fmt: skip
    document = datasets.list_json(rows)
    _validate("datasets-list", document)
    assert document["datasets"][0]["created_at"] == NOW.isoformat()


def test_backup_create_json_validates() -> None:
    record = backup_record("20261126T030000Z")
    point = RestorePoint("cqox_20261126T030000Z", "0/2000100", 1, NOW, "cqox", {})
    document = backup.created_json(record, "s3://cqox-backups/k/20261126T030000Z", point)
    _validate("backup-create", document)
    assert document["backup"]["verified"] is False


@pytest.mark.parametrize("started", [True, False])
def test_restore_json_validates(started: bool) -> None:
    restored = RestoredCluster(
        pgdata=Path("/srv/restore/pg"),
        socket_dir=Path("/srv/restore/.pg-run-x1y2"),
        port=54329,
        log=Path("/srv/restore/.pg-run-x1y2/postgres.log"),
        started=started,
        backup_id="20261126T030000Z",
        outcome="promoted" if started else "not started",
        stopped_at="recovery stopping after commit of transaction 73110" if started else "",
    )
    document = backup.restored_json(restored)
    _validate("restore", document)
    assert (document["psql"] is not None) == started
