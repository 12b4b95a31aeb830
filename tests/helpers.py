"""Helpers shared by more than one test module, so that no test module imports another.

Fixtures shared by a directory live in its ``conftest.py``; what is here are plain functions and values: the
repository root, the test stack's directories and ports, clients of the stack's services as the platform builds
them, asset runs and their results, alert receipts, and the domain values unit tests build their cases from.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import click
import dagster as dg

from cqox_platform.alerts.client import AlertmanagerClient, ReceiverClient
from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.wal_names import Segment
from cqox_platform.backup.verify.info import (
    BackupEntry,
    ClusterPosition,
    CopyInfo,
    backup_wal_missing,
    recovery_window,
    with_earliest_verified,
)
from cqox_platform.backup.verify.recoverability import Evidence as RecoverabilityEvidence
from cqox_platform.backup.wal.status import WalStatus
from cqox_platform.canary.decision import Evidence, MetricValue
from cqox_platform.canary.policy import POLICY_DIR, load_policy
from cqox_platform.cli.app import main as cli_main
from cqox_platform.pgserver import free_port
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.stack import Stack, StackConfig
from cqox_platform.stack.config import DEFAULT_PORTS
from cqox_platform.stack.process import pid_alive
from cqox_platform.stack.s3 import client_config

#: The checkout the tests run from (docs, deploy/ and the package sources are read from it).
REPO_ROOT = Path(__file__).resolve().parents[1]

# --- the local stack ------------------------------------------------------------------------------------------


def make_world_traversable_tmpdir(prefix: str) -> Path:
    """A new directory under /tmp that the postgres OS user can enter (mkdtemp makes it owner-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def distinct_free_ports(names) -> dict[str, int]:
    """One free port per name, no two alike (the kernel may hand out a port twice while none is bound)."""
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


#: A test stack's directory names the PID of the test process that owns it, so a later run can tell an orphan.
OWNER_FILE = "owner.pid"


def reap_orphan_stacks(parent: Path = Path("/tmp")) -> list[Path]:
    """Stop and remove test stacks whose owning test process is gone; return their directories.

    A killed test run (SIGKILL, a CI timeout) never reaches ``running_stack``'s ``finally``, and its ~40 services
    keep their ports, memory and CPU until someone notices. Only directories that name their owner are touched:
    another worker's or another checkout's stack names a live process, and a developer's kept stack has no owner.
    """
    reaped = []
    for root in sorted(parent.glob("cqox-test-*")):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        Stack.from_dir(root).down()
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


@contextmanager
def running_stack(prefix: str, **options) -> Iterator[Stack]:
    """A stack on free ports in a new world-traversable directory, stopped (and removed) afterwards.

    Orphans of killed runs are reaped first, and this stack names its owner so that the next run can reap it.
    """
    reap_orphan_stacks()
    root = make_world_traversable_tmpdir(prefix)
    (root / OWNER_FILE).write_text(f"{os.getpid()}\n")
    st = Stack(StackConfig(root=root, ports=distinct_free_ports(list(DEFAULT_PORTS)), with_daemon=False, **options))
    try:
        st.up()
        yield st
    finally:
        st.down()
        if not os.environ.get("CQOX_KEEP_TEST_STACK"):
            shutil.rmtree(root, ignore_errors=True)


# --- clients of a stack's services, as the platform's resources build them --------------------------------------


def vault_admin(stack: Stack) -> VaultResource:
    """Vault with the stack's root token (what ``vault_config`` configures Vault with)."""
    env = stack.env()
    return VaultResource(
        addr=env["VAULT_ADDR"],
        cacert=env["VAULT_CACERT"],
        auth_method="token",
        token_file=env["CQOX_VAULT_ROOT_TOKEN_FILE"],
    )


def vault_platform(stack: Stack) -> VaultResource:
    """Vault as the platform's AppRole (least privilege)."""
    env = stack.env()
    return VaultResource(
        addr=env["VAULT_ADDR"], cacert=env["VAULT_CACERT"], approle_file=env["CQOX_VAULT_APPROLE_FILE"]
    )


def postgres_admin(stack: Stack) -> PostgresResource:
    """The stack's PostgreSQL as its administrator, over TLS."""
    env = stack.env()
    return PostgresResource(
        host=env["CQOX_PG_HOST"],
        port=int(env["CQOX_PG_PORT"]),
        dbname=env["CQOX_PG_DB"],
        user=env["CQOX_PG_USER"],
        sslrootcert=env["CQOX_PG_SSLROOTCERT"],
        passfile=env["CQOX_PG_PASSFILE"],
    )


def materialize_vault_config(stack: Stack) -> dg.ExecuteInProcessResult:
    """``vault_config`` and ``transport_security`` in process: engines, policies, keys, the archiver's settings."""
    from dagster_aws.s3 import S3Resource

    from assets import security

    env = stack.env()
    # As under `eval "$(cqox-platform stack env)"`: the check trusts for S3 what boto3 trusts (AWS_CA_BUNDLE),
    # and the WAL archiver's settings file, bucket and S3 credentials come from the same variables.
    with mock.patch.dict(os.environ, env):
        return dg.materialize(
            [security.vault_config, security.transport_security],
            resources={
                "vault_admin": vault_admin(stack),
                "postgres_admin": postgres_admin(stack),
                "postgres": postgres_admin(stack),
                "vault": vault_platform(stack),
                "s3": S3Resource(endpoint_url=env["CQOX_S3_ENDPOINT"], region_name="us-east-1"),
            },
        )


def s3_client(env: dict[str, str]):
    """An S3 client of the stack's endpoint, from a session of its own: boto3's default session keeps the first
    credentials it resolved, and the HA tests run a second stack with other S3 keys in the same process."""
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=env["CQOX_S3_ENDPOINT"], config=client_config())


def dr_s3_client(env: dict[str, str], role: str = "reader"):
    """An S3 client of the stack's DR region with its writer's or its read-only reader's key."""
    from cqox_platform.archiver_clients import s3_client_from_file

    key = "CQOX_S3_DR_CREDENTIALS_FILE" if role == "writer" else "CQOX_S3_DR_READER_CREDENTIALS_FILE"
    return s3_client_from_file(env["CQOX_S3_DR_ENDPOINT"], env["CQOX_S3_DR_CACERT"], env[key])


# --- backup assets run in process -----------------------------------------------------------------------------


def backup_resources(stack: Stack, env: dict[str, str]) -> dict[str, Any]:
    """The resources the backups group needs, pointed at ``stack``."""
    from dagster_aws.s3 import S3Resource

    from cqox_platform.resources.backups import BackupStorageResource
    from cqox_platform.resources.prometheus import PrometheusResource

    return {
        "postgres_admin": postgres_admin(stack),
        "vault": vault_platform(stack),
        "s3": S3Resource(endpoint_url=env["CQOX_S3_ENDPOINT"], region_name="us-east-1"),
        "backups": BackupStorageResource(
            bucket=env["CQOX_S3_BUCKET"],
            dr_bucket=env["CQOX_S3_DR_BUCKET"],
            dr_endpoint=env["CQOX_S3_DR_ENDPOINT"],
            dr_cacert=env["CQOX_S3_DR_CACERT"],
            dr_credentials_file=env["CQOX_S3_DR_CREDENTIALS_FILE"],
            dr_reader_credentials_file=env["CQOX_S3_DR_READER_CREDENTIALS_FILE"],
            archiver_settings=env["CQOX_WAL_ARCHIVER_CONFIG"],
        ),
        "prometheus": PrometheusResource(
            url=env["CQOX_PROMETHEUS_URL"],
            rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
            pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
        ),
    }


def materialize_backups(
    stack: Stack, env: dict[str, str], assets: list, config: dict | None = None, instance=None
) -> dg.ExecuteInProcessResult:
    """Backup assets in process with ``config`` as their ops config; a failed run is returned, not raised."""
    return dg.materialize(
        assets,
        resources=backup_resources(stack, env),
        run_config={"ops": config or {}},
        instance=instance,
        raise_on_error=False,
    )


def asset_metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    """The plain values of the one materialization of ``node`` in ``result``."""
    (event,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in event.metadata.items()}


def assert_drill_passed(result: dg.ExecuteInProcessResult) -> None:
    """``restore_drill`` in ``result`` verified its backup; else fail with the drill's error."""
    meta = asset_metadata(result, "restore_drill")
    assert meta["status"] == "passed", meta.get("error")


def table_rows(value: dg.TableMetadataValue) -> list[dict[str, Any]]:
    """The records of a table metadata value as dicts keyed by column name."""
    assert isinstance(value, dg.TableMetadataValue), f"not a table: {value!r}"
    return [dict(r.data) for r in value.records]


def assert_native_metadata(metadata: Mapping[str, dg.MetadataValue], where: str) -> None:
    """What the UI shows of one event is native: tables are typed records whose cells have their column's type,
    no Markdown text holds a table, and no text entry is empty (an empty field is left out instead)."""
    python_types = {"int": (int,), "float": (int, float), "bool": (bool,), "string": (str,)}
    for key, value in metadata.items():
        if isinstance(value, dg.TableMetadataValue):
            for record in value.records:
                for col in value.schema.columns:
                    cell = record.data[col.name]
                    ok = cell is None or (
                        isinstance(cell, python_types[col.type])
                        and not (col.type in ("int", "float") and isinstance(cell, bool))
                    )
                    assert ok, f"{where} {key}: column {col.name!r} is {col.type}, cell {cell!r}"
        elif isinstance(value, dg.MarkdownMetadataValue):
            assert "|---" not in value.value and "| --- |" not in value.value, f"{where} {key} is a Markdown table"
        elif isinstance(value, dg.TextMetadataValue):
            assert value.value != "", f"{where} {key} is empty text"


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    """Asset check name -> passed, for every check evaluated in ``result``."""
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


# --- alerting -------------------------------------------------------------------------------------------------


def alertmanager_client(env: dict[str, str]) -> AlertmanagerClient:
    """The stack's Alertmanager with its basic-auth user."""
    return AlertmanagerClient(
        env["CQOX_ALERTMANAGER_URL"],
        env["CQOX_ALERTMANAGER_CACERT"],
        env["CQOX_ALERTMANAGER_USER"],
        env["CQOX_ALERTMANAGER_PASSWORD_FILE"],
    )


def received_about(records: list[dict], service: str, alertname: str) -> list[dict]:
    """Received records of this test's service and alert name (PagerDuty summary or webhook alerts)."""
    found = []
    for r in records:
        if r["kind"] == "pagerduty":
            summary = r["body"]["payload"]["summary"]
            if service in summary and alertname in summary:
                found.append(r)
        elif any(
            a["labels"].get("service") == service and a["labels"].get("alertname") == alertname
            for a in r["body"].get("alerts", [])
        ):
            found.append(r)
    return found


def wait_for_received(
    receiver: ReceiverClient, since: float, ready: Callable[[list[dict]], Any], timeout: float = 150
) -> list[dict]:
    """What the receiver got since ``since``, once ``ready`` accepts it (polled; fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        records = receiver.received(since)
        if ready(records):
            return records
        assert time.monotonic() < deadline, f"not received within {timeout}s: {json.dumps(records)[:2000]}"
        time.sleep(1)


def alerting_on(stack: Stack) -> dict[str, str]:
    """Routing (vault_config stores the receiver's key, alertmanager_config loads the routes) and every platform
    rule file loaded into this stack's Prometheus."""
    from assets import alerting
    from cqox_platform.resources.alertmanager import AlertmanagerResource
    from cqox_platform.resources.prometheus import PrometheusResource

    assert materialize_vault_config(stack).success
    env = stack.env()
    prometheus = PrometheusResource(
        url=env["CQOX_PROMETHEUS_URL"],
        rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
        pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
    )
    with mock.patch.dict(os.environ, env), dg.instance_for_test() as instance:
        result = dg.materialize(
            [alerting.alertmanager_config, alerting.platform_alert_rules],
            resources={
                "alertmanager": AlertmanagerResource.from_settings(),
                "vault": vault_platform(stack),
                "prometheus": prometheus,
            },
            instance=instance,
        )
    assert result.success
    (event,) = result.asset_materializations_for_node("platform_alert_rules")
    assert "cqox-services" in event.metadata["loaded_groups"].value
    return env


# --- high availability ----------------------------------------------------------------------------------------


def wait_healthy(stack: Stack, timeout: float = 120.0):
    """One leader and every member running and streaming (an old leader rejoins through pg_rewind)."""
    service = stack.service("patroni")
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        try:
            state = service.client().cluster()
            if service.healthy():
                return state
        except Exception:
            pass
        time.sleep(1)
    raise AssertionError(f"cluster not healthy after {timeout} s: {state}")


# --- values unit tests build their cases from -----------------------------------------------------------------

#: The canary policy the platform ships for the engine.
CANARY_POLICY = load_policy(POLICY_DIR / "cqox-engine.yaml")


def good_evidence(requests=5000, err=0.001, err_stable=0.001, p99=0.3, p99_stable=0.3, budget=0.9) -> Evidence:
    """Canary evidence that passes every gate of ``CANARY_POLICY`` unless a value is overridden."""
    return Evidence(
        requests,
        requests * 9,
        (MetricValue("error_ratio", err, err_stable), MetricValue("latency_p99", p99, p99_stable)),
        budget_remaining=budget,
    )


#: When the backup of ``backup_record`` started and stopped.
BACKUP_STARTED = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
BACKUP_STOPPED = datetime(2026, 3, 1, 3, 5, tzinfo=UTC)


def backup_record(backup_id: str) -> BackupRecord:
    """A small backup of timeline 1 in one segment, taken from ``BACKUP_STARTED`` to ``BACKUP_STOPPED``."""
    return BackupRecord(
        backup_id=backup_id,
        system_id="7",
        bucket="b",
        label=backup_id,
        timeline=1,
        start_lsn="0/2000028",
        stop_lsn="0/2000100",
        start_wal="000000010000000000000002",
        stop_wal="000000010000000000000002",
        start_time=BACKUP_STARTED.isoformat(),
        stop_time=BACKUP_STOPPED.isoformat(),
        database_bytes=100,
        compressed_bytes=40,
        stored_bytes=50,
        duration_seconds=2.0,
        throughput_mib_s=1.0,
        key_name="cqox-backups",
        key_version=1,
        object_key=f"k/{backup_id}",
        manifest_key=f"k/{backup_id}.manifest",
        pg_version="15",
    )


def wal_status(**overrides) -> WalStatus:
    """A healthy archive of ``backup_record``'s cluster (continuous, archived 30 s ago), with ``overrides``."""
    values = {
        "archived_count": 10,
        "failed_count": 0,
        "last_archived_wal": "000000010000000000000009",
        "last_archived_time": BACKUP_STOPPED,
        "last_failed_wal": None,
        "last_failed_time": None,
        "timeline": 1,
        "current_lsn": "0/A000000",
        "newest_archived_segment": "000000010000000000000009",
        "newest_archived_age_seconds": 30.0,
        "rpo_bytes": 0,
        "rpo_seconds": 30.0,
        "forced_switch": False,
        "segments_in_archive": 10,
        "continuity_from": "000000010000000000000002",
        "continuity_to": "000000010000000000000009",
        "required_segments": 8,
        "archive_mode": "on",
        "timeline_start_lsn": "0/0",
        "timeline_history_archived": True,
    }
    return WalStatus(**{**values, **overrides})


#: The login in front of the Dagster UI (deploy/dagster/ui-auth) and the values its manifests are rendered with.
UI_AUTH_DIR = REPO_ROOT / "deploy" / "dagster" / "ui-auth"
UI_AUTH_VALUES = {
    "NAMESPACE": "cqox",
    "UI_HOST": "dagster.example.org",
    "OIDC_ISSUER_URL": "https://login.example.org",
    "OPERATOR_GROUP": "cqox-operators",
}
#: The Dagster Helm chart's webserver pods (release `dagster`).
WEBSERVER_POD_LABELS = {"app.kubernetes.io/name": "dagster", "component": "dagster-webserver"}


# --- the CLI's help examples ------------------------------------------------------------------------------------


def _cli_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _cli_commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def cli_examples() -> list[tuple[str, str]]:
    """``(where, example)`` for every ``cqox-platform ...`` line after "Examples:" in a command's help or epilog."""
    examples = []
    for path, command in _cli_commands(cli_main):
        for text in (command.help or "", command.epilog or ""):
            lines = text.splitlines()
            if not any(line.strip() == "Examples:" for line in lines):
                continue
            for line in lines[[line.strip() for line in lines].index("Examples:") :]:
                if line.strip().startswith("cqox-platform "):
                    examples.append((" ".join(path) or "cqox-platform", line.strip()))
    return examples


# --- evidence for the recoverability verdict (unit tests of the core and of the asset) ------------------------


EVIDENCE_AS_OF = BACKUP_STOPPED + timedelta(hours=2)
EVIDENCE_ARCHIVED = {Segment(1, n).name for n in range(2, 10)}
EVIDENCE_POSITION = ClusterPosition(1, "0/A000100")
EVIDENCE_BACKUP_ID = "20260301T030000Z"


def drill_row(drill_id: str = "d-1", status: str = "passed", rto: float | None = 42.5, **extra) -> dict:
    return {
        "drill_id": drill_id,
        "backup_id": EVIDENCE_BACKUP_ID,
        "passed": status == "passed",
        "status": status,
        "error": None if status == "passed" else "checksum of public.t differs",
        "rto_seconds": rto,
        "finished_at": EVIDENCE_AS_OF - timedelta(minutes=30),
        **extra,
    }


def copy_info(
    name: str = "primary",
    *,
    verified: bool = True,
    archived: set[str] = EVIDENCE_ARCHIVED,
    sealed_ago: float = 60.0,
    ids: tuple[str, ...] = (EVIDENCE_BACKUP_ID,),
) -> CopyInfo:
    records = [backup_record(i) for i in ids]
    drill = drill_row() if verified else None
    entries = [BackupEntry(r, backup_wal_missing(r, archived), drill, drill) for r in records]
    sealed_at = EVIDENCE_AS_OF - timedelta(seconds=sealed_ago)
    window = recovery_window(records, EVIDENCE_POSITION, archived, {}, sealed_at, EVIDENCE_AS_OF)
    window = with_earliest_verified(window, entries)
    return CopyInfo(name, f"s3://{name}-bucket/postgres/7/", entries, window, len(archived))


def recoverability_evidence(**changes) -> RecoverabilityEvidence:
    values = {
        "as_of": EVIDENCE_AS_OF,
        "copies": [copy_info("primary"), copy_info("dr", sealed_ago=300.0)],
        "unreadable": [],
        "last_drill": drill_row(),
        "dr_configured": True,
    }
    return RecoverabilityEvidence(**{**values, **changes})
