"""The encrypted dataset flow end to end on the real stack: upload, sensor, ingest, read, reject, rotate, scan."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg
import pytest
from dagster_aws.s3 import S3Resource

from assets.datasets import dataset_key_rotation, datasets_partitions, encrypted_datasets
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.schema import MigrationRunner
from sensors.datasets_sensor import dataset_upload_sensor
from tests.integration.test_vault import _admin, _materialize_vault_config, _platform, _postgres_admin

CLI = [sys.executable, "-m", "cqox_platform.cli"]


@pytest.fixture(scope="module")
def env(stack):
    """The stack environment in this process too (boto3 reads its CA and credentials from it)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in stack.env().items():
            mp.setenv(key, value)
        assert _materialize_vault_config(stack).success
        with _postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        yield stack.env()


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _resources(stack) -> dict:
    env = stack.env()
    return {
        "s3": S3Resource(endpoint_url=env["CQOX_S3_ENDPOINT"], region_name="us-east-1"),
        "postgres": PostgresResource(
            host="127.0.0.1",
            port=int(env["CQOX_PG_PORT"]),
            dbname=env["CQOX_PG_DB"],
            user="vault-issued",
            sslrootcert=env["CQOX_PG_SSLROOTCERT"],
            vault=_platform(stack),
            vault_db_role="cqox-platform",
        ),
        "vault": _platform(stack),
    }


def _cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def _frame(n: int = 200) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "treatment": [i % 2 for i in range(n)],
            "outcome": [0.5 * i + (i % 2) * 3 for i in range(n)],
            "age": [20 + i % 50 for i in range(n)],
            "region": [["north", "south", "east"][i % 3] for i in range(n)],
        }
    )


def _ingest(stack, instance, name: str, landing_key: str, **config) -> dg.ExecuteInProcessResult:
    if name not in instance.get_dynamic_partitions("datasets"):
        instance.add_dynamic_partitions("datasets", [name])
    return dg.materialize(
        [encrypted_datasets],
        instance=instance,
        partition_key=name,
        resources=_resources(stack),
        run_config={"ops": {"encrypted_datasets": {"config": {"landing_key": landing_key, **config}}}},
        raise_on_error=False,
    )


def _upload(env, tmp_path: Path, name: str, content: bytes | pd.DataFrame, suffix: str = ".csv") -> str:
    path = tmp_path / f"upload{suffix}"
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False) if suffix == ".csv" else content.to_parquet(path, index=False)
    else:
        path.write_bytes(content)
    result = _cli(env, "datasets", "upload", str(path), "--name", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("s3://", 1)[1].split(" ", 1)[0].split("/", 1)[1]


def _keys(prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["CQOX_S3_ENDPOINT"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=os.environ["CQOX_S3_BUCKET"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _db(stack) -> psycopg.Connection:
    return psycopg.connect(**_postgres_admin(stack).conninfo(), autocommit=True)


def test_sensor_turns_an_upload_into_a_partitioned_run(stack, env, instance, tmp_path):
    key = _upload(env, tmp_path, "sensor-demo", _frame(10))
    context = dg.build_sensor_context(instance=instance, resources={"s3": _resources(stack)["s3"]})
    result = dataset_upload_sensor(context)
    requests = [r for r in result.run_requests if r.partition_key == "sensor-demo"]
    assert len(requests) == 1
    assert requests[0].run_key.startswith(f"{key}@")
    assert requests[0].run_config["ops"]["encrypted_datasets"]["config"]["landing_key"] == key
    (add,) = result.dynamic_partitions_requests
    assert "sensor-demo" in add.partition_keys and add.partitions_def_name == datasets_partitions.name
    again = dataset_upload_sensor(
        dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"s3": _resources(stack)["s3"]})
    )
    assert isinstance(again, dg.SkipReason) or not [r for r in again.run_requests if r.partition_key == "sensor-demo"]


def test_valid_upload_is_encrypted_tracked_and_round_trips(stack, env, instance, tmp_path):
    frame = _frame()
    key = _upload(env, tmp_path, "trial-good", frame)
    result = _ingest(stack, instance, "trial-good", key)
    assert result.success
    (event,) = result.asset_materializations_for_node("encrypted_datasets")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["rows"] == 200 and meta["columns"] == 4 and meta["treated"] == 100
    dataset_id = meta["dataset_id"]
    assert key not in _keys("landing/")
    stored = _keys(f"datasets/{dataset_id}/")
    assert sorted(stored) == [
        f"datasets/{dataset_id}/data.parquet.enc",
        f"datasets/{dataset_id}/data.parquet.enc.manifest.json",
    ]
    with _db(stack) as conn:
        status, wrapped, version, sha, path_is_encrypted = conn.execute(
            "SELECT status, wrapped_dek, key_version, plaintext_sha256, encrypted_data_path IS NOT NULL "
            "AND position(convert_to('datasets/', 'UTF8') in encrypted_data_path) = 0 FROM datasets WHERE id = %s",
            (dataset_id,),
        ).fetchone()
        audit = conn.execute("SELECT action FROM audit_log WHERE resource = %s", (dataset_id,)).fetchall()
    assert status == "ready" and wrapped.startswith("vault:v") and version >= 1 and len(sha) == 64
    assert path_is_encrypted
    assert audit == [("dataset.ingested",)]
    out = tmp_path / "back.parquet"
    got = _cli(env, "datasets", "get", dataset_id, "--out", str(out))
    assert got.returncode == 0, got.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)
    listing = _cli(env, "datasets", "list")
    assert dataset_id in listing.stdout and "ready" in listing.stdout


BAD_UPLOADS = {
    "malformed": (b'treatment,outcome,age\n1,2.0,"unterminated\n0,1,3\n', "unreadable"),
    "missing-column": (b"treatment,age\n1,30\n0,40\n", "missing column 'outcome'"),
    "mistyped-outcome": (b"treatment,outcome,age\n1,high,30\n0,low,40\n", "must be numeric"),
    "non-binary": (b"treatment,outcome,age\n2,1.5,30\n0,1.0,40\n", "must be binary"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_invalid_upload_is_quarantined_and_changes_nothing_else(stack, env, instance, tmp_path, case):
    content, reason = BAD_UPLOADS[case]
    name = f"bad-{case}"
    key = _upload(env, tmp_path, name, content)
    before = set(_keys("datasets/"))
    result = _ingest(stack, instance, name, key)
    assert not result.success
    assert key not in _keys("landing/")
    assert set(_keys("datasets/")) == before
    quarantined = _keys(f"quarantine/{name}/")
    assert len(quarantined) == 2 and any(k.endswith(".error.json") for k in quarantined)
    with _db(stack) as conn:
        rows = conn.execute("SELECT status, metadata, wrapped_dek FROM datasets WHERE name = %s", (name,)).fetchall()
    assert len(rows) == 1
    status, metadata, wrapped = rows[0]
    assert status == "rejected" and wrapped is None
    assert any(reason in p for p in metadata["problems"])


def test_oversized_upload_is_rejected_before_download(stack, env, instance, tmp_path):
    key = _upload(env, tmp_path, "too-big", _frame(500))
    result = _ingest(stack, instance, "too-big", key, max_bytes=1000)
    assert not result.success
    with _db(stack) as conn:
        (metadata,) = conn.execute("SELECT metadata FROM datasets WHERE name = 'too-big'").fetchone()
    assert "exceeds the limit of 1000" in metadata["problems"][0]


@pytest.mark.parametrize("name", ["../etc", "x'; DROP TABLE datasets;--", "", "a" * 200, ".hidden"])
def test_dangerous_names_are_refused_at_upload(env, tmp_path, name):
    path = tmp_path / "d.csv"
    _frame(3).to_csv(path, index=False)
    result = _cli(env, "datasets", "upload", str(path), "--name", name)
    assert result.returncode != 0
    assert "invalid dataset name" in result.stderr
    assert "Traceback" not in result.stderr


def test_rotation_rewraps_every_dek_without_rewriting_data(stack, env, instance, tmp_path):
    frame = _frame(50)
    key = _upload(env, tmp_path, "rotate-me", frame)
    assert _ingest(stack, instance, "rotate-me", key).success
    with _db(stack) as conn:
        ready = conn.execute("SELECT id::text FROM datasets WHERE status = 'ready'").fetchall()
    import boto3

    client = boto3.client("s3", endpoint_url=env["CQOX_S3_ENDPOINT"])
    etags = {
        i: client.head_object(Bucket=env["CQOX_S3_BUCKET"], Key=f"datasets/{i}/data.parquet.enc")["ETag"]
        for (i,) in ready
    }
    result = dg.materialize(
        [dataset_key_rotation],
        resources=_resources(stack),
        instance=instance,
        run_config={"ops": {"dataset_key_rotation": {"config": {"raise_min_decryption_version": True}}}},
    )
    assert result.success
    (event,) = result.asset_materializations_for_node("dataset_key_rotation")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["rewrapped"] == len(ready)
    new = meta["new_version"]
    with _db(stack) as conn:
        versions = {v for (v,) in conn.execute("SELECT DISTINCT key_version FROM datasets WHERE status = 'ready'")}
        recorded = conn.execute(
            "SELECT key_version, rotated_at IS NOT NULL FROM encryption_keys WHERE key_name = 'cqox-datasets'"
        ).fetchone()
    assert versions == {new} and recorded == (new, True)
    for dataset_id, etag in etags.items():
        assert (
            client.head_object(Bucket=env["CQOX_S3_BUCKET"], Key=f"datasets/{dataset_id}/data.parquet.enc")["ETag"]
            == etag
        )  # never re-uploaded
        manifest = json.loads(
            client.get_object(
                Bucket=env["CQOX_S3_BUCKET"], Key=f"datasets/{dataset_id}/data.parquet.enc.manifest.json"
            )["Body"].read()
        )
        assert manifest["wrapped_dek"].startswith(f"vault:v{new}:")
        out = tmp_path / f"{dataset_id}.parquet"
        got = _cli(env, "datasets", "get", dataset_id, "--out", str(out))
        assert got.returncode == 0, got.stderr


def test_no_secret_reaches_logs_event_log_or_metadata(stack, env, instance, tmp_path):
    """After the whole flow: DEKs, tokens, passwords and keys appear in no log the operators read."""
    key = _upload(env, tmp_path, "scan-me", _frame(30))
    assert _ingest(stack, instance, "scan-me", key).success
    admin = _admin(stack)
    secrets: set[str] = set()
    with _db(stack) as conn:
        for (wrapped,) in conn.execute("SELECT wrapped_dek FROM datasets WHERE wrapped_dek IS NOT NULL"):
            try:
                dek = admin.decrypt("cqox-datasets", wrapped)
            except Exception:
                continue  # retired by the rotation test: no longer decryptable, so not checkable here
            secrets |= {base64.b64encode(dek).decode(), dek.hex()}
    secrets.add(admin.read_secret("cqox/datasets-path-key")["value"])
    for path in stack.config.secrets_dir.iterdir():
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
            secrets |= {v for v in data.values() if isinstance(v, str)}
            secrets |= {x for v in data.values() if isinstance(v, list) for x in v}
        else:
            secrets |= {line.split("=", 1)[1].strip().strip('"') for line in text.splitlines() if "=" in line}
            secrets |= {line.rsplit(":", 1)[1] for line in text.splitlines() if line.count(":") >= 4}
    secrets |= {_platform(stack).client().token}
    secrets = {s for s in secrets if len(s) >= 16}
    assert len(secrets) >= 6

    haystacks: dict[str, str] = {}
    for run in instance.get_runs():  # the in-process runs of these tests
        entries = instance.event_log_storage.get_logs_for_run(run.run_id)
        haystacks[f"event log of run {run.run_id}"] = "\n".join(dg.serialize_value(e) for e in entries)
    # The stack's own Dagster instance (CLI and webserver runs), stored in its PostgreSQL.
    with psycopg.connect(**stack.service("postgres").conninfo("dagster")) as conn:
        haystacks["stack Dagster event_logs"] = "\n".join(r[0] for r in conn.execute("SELECT event FROM event_logs"))
    compute_roots = [Path(instance.root_directory), Path(stack.env()["DAGSTER_HOME"])]
    for log_file in [
        *stack.config.logs_dir.glob("*.log"),
        stack.service("postgres").log_path,
        stack.service("openbao").audit_log,
    ]:
        haystacks[str(log_file)] = Path(log_file).read_text(errors="replace")
    for root in compute_roots:
        for compute_log in root.rglob("*"):
            if compute_log.is_file() and compute_log.suffix in (".out", ".err", ".log"):
                haystacks[str(compute_log)] = compute_log.read_text(errors="replace")
    assert len(haystacks) >= 8
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:4]}...) leaked into {where}"
