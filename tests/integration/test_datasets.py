"""The encrypted dataset flow end to end on the real stack: upload, sensor, ingest, read, reject, rotate, scan."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import jsonschema
import pandas as pd
import psycopg
import pytest
from dagster_aws.s3 import S3Resource

from assets.datasets import dataset_key_rotation, datasets_partitions, encrypted_datasets
from cqox_platform.cli.json_schema import load_schema
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.schema import MigrationRunner
from sensors.datasets_sensor import dataset_upload_sensor
from tests.helpers import materialize_vault_config, postgres_admin, vault_admin, vault_platform

CLI = [sys.executable, "-m", "cqox_platform.cli"]


@pytest.fixture(scope="module")
def env(stack):
    """The stack environment in this process too (boto3 reads its CA and credentials from it)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in stack.env().items():
            mp.setenv(key, value)
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
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
            vault=vault_platform(stack),
            vault_db_role="cqox-platform",
        ),
        "vault": vault_platform(stack),
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

    client = boto3.session.Session().client("s3", endpoint_url=os.environ["CQOX_S3_ENDPOINT"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=os.environ["CQOX_S3_BUCKET"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _db(stack) -> psycopg.Connection:
    return psycopg.connect(**postgres_admin(stack).conninfo(), autocommit=True)


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
    as_json = _cli(env, "datasets", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    jsonschema.Draft202012Validator(load_schema("datasets-list"), format_checker=jsonschema.FormatChecker()).validate(
        document
    )
    (row,) = (d for d in document["datasets"] if d["id"] == dataset_id)
    assert (row["status"], row["plaintext_sha256"], row["key_version"]) == ("ready", sha, version)


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


def test_a_parquet_that_decodes_to_30m_rows_is_quarantined_before_it_is_decoded(stack, env, instance, tmp_path):
    """Failed before: the few-hundred-KiB upload passed ``max_bytes`` and was decoded whole (30 M rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    bomb = tmp_path / "bomb.parquet"
    chunk = pa.table({c: np.zeros(1_000_000, dtype=np.int64) for c in ("treatment", "outcome", "age")})
    with pq.ParquetWriter(bomb, chunk.schema, compression="zstd") as writer:
        for _ in range(30):
            writer.write_table(chunk)
    key = _upload(env, tmp_path, "bomb", bomb.read_bytes(), suffix=".parquet")
    result = _ingest(stack, instance, "bomb", key)
    assert not result.success
    with _db(stack) as conn:
        (status, metadata) = conn.execute("SELECT status, metadata FROM datasets WHERE name = 'bomb'").fetchone()
    assert status == "rejected"
    assert "30000000 rows, over the limit of 10000000 (CQOX_DATASET_MAX_ROWS)" in metadata["problems"][0]


def test_column_names_cannot_break_the_schema_table(stack, env, instance, tmp_path):
    """Failed before: a column named ``dose|mg`` added a cell to its row of the Markdown table in the metadata;
    the table is now typed records, where a column name is data."""
    frame = _frame(20).rename(columns={"age": "dose|mg"})
    key = _upload(env, tmp_path, "piped-columns", frame)
    result = _ingest(stack, instance, "piped-columns", key)
    assert result.success
    (event,) = result.asset_materializations_for_node("encrypted_datasets")
    records = [r.data for r in event.metadata["schema"].value.records]
    assert {"column": "dose|mg", "dtype": "int64", "nulls": 0} in records, records
    assert all(set(r) == {"column", "dtype", "nulls"} for r in records), records


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

    client = boto3.session.Session().client("s3", endpoint_url=env["CQOX_S3_ENDPOINT"])
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
    admin = vault_admin(stack)
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
    secrets |= {vault_platform(stack).client().token}
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


# --- issue 13 item 6: key rotation races ingest ------------------------------------------------------------------


class _PausedAfterKeying:
    """A data-key provider that holds the ingest between getting its DEK and storing it, as a slow upload would."""

    def __init__(self, inner, keyed, release) -> None:
        self.inner, self.keyed, self.release = inner, keyed, release
        self.key_name = inner.key_name

    def generate_data_key(self):
        key = self.inner.generate_data_key()
        self.keyed.set()
        self.release.wait(30)
        return key

    def unwrap(self, wrapped):
        return self.inner.unwrap(wrapped)


def _store_args(stack, env):
    import boto3

    from cqox_platform.secrets.vault_setup import DATASET_PATH_KEY

    vault = vault_platform(stack)
    return {
        "s3": boto3.session.Session().client("s3", endpoint_url=env["CQOX_S3_ENDPOINT"]),
        "bucket": env["CQOX_S3_BUCKET"],
        "vault": vault,
        "path_key": vault.read_secret(DATASET_PATH_KEY)["value"],
    }


def test_rotation_during_an_ingest_leaves_the_new_dataset_readable(stack, env, tmp_path):
    """An ingest keyed before a rotation and stored after its row scan must not be stranded on a retired version."""
    import threading

    from cqox_platform.datasets.rotation import rotate_dataset_keys
    from cqox_platform.datasets.store import get_dataset, ingest_upload
    from cqox_platform.datasets.validation import DatasetSchema

    frame = _frame(40)
    landing = _upload(env, tmp_path, "race-ingest", frame)
    args = _store_args(stack, env)
    vault, key_name = args["vault"], "cqox-datasets"
    keyed, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def ingest() -> None:
        with _resources(stack)["postgres"].connect(autocommit=True) as conn:
            try:
                outcome["ingest"] = ingest_upload(
                    s3=args["s3"],
                    bucket=args["bucket"],
                    key=landing,
                    conn=conn,
                    provider=_PausedAfterKeying(vault.key_provider(key_name), keyed, release),
                    path_key=args["path_key"],
                    schema=DatasetSchema(),
                )
            except BaseException as exc:  # reported by the assertions below
                outcome["ingest"] = exc

    def rotate() -> None:
        with _resources(stack)["postgres"].connect(autocommit=True) as conn:
            try:
                outcome["rotation"] = rotate_dataset_keys(
                    conn=conn,
                    s3=args["s3"],
                    bucket=args["bucket"],
                    vault=vault,
                    key_name=key_name,
                    raise_min_decryption_version=True,
                )
            except BaseException as exc:
                outcome["rotation"] = exc

    ingester = threading.Thread(target=ingest)
    ingester.start()
    assert keyed.wait(60), "the ingest never asked for a data key"
    rotator = threading.Thread(target=rotate)
    rotator.start()
    rotator.join(5)  # today's rotation finishes here, before the ingest has stored its row
    release.set()
    ingester.join(60)
    rotator.join(120)
    assert not ingester.is_alive() and not rotator.is_alive()
    result, report = outcome["ingest"], outcome["rotation"]
    assert not isinstance(result, BaseException), result
    assert not isinstance(report, BaseException), report
    with _db(stack) as conn:
        (version,) = conn.execute("SELECT key_version FROM datasets WHERE id = %s", (result.dataset_id,)).fetchone()
    info = vault.key_info(key_name)
    assert version >= info["min_decryption_version"], (
        f"dataset {result.dataset_id} stayed on v{version} while min_decryption_version is "
        f"{info['min_decryption_version']}: unreadable"
    )
    out = tmp_path / "race.parquet"
    with _db(stack) as conn:
        get_dataset(
            s3=args["s3"],
            bucket=args["bucket"],
            conn=conn,
            dataset_id=result.dataset_id,
            provider_for=vault.key_provider,
            path_key=args["path_key"],
            out=out,
        )
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)


def test_rotation_does_not_retire_a_version_a_dataset_still_uses(stack, env, tmp_path, instance):
    """The minimum is raised only after a re-count finds nothing older: a row written around the lock (an old
    platform version during a deploy) must stop the retirement, loudly, and leave every dataset readable."""
    from cqox_platform.datasets.rotation import rotate_dataset_keys
    from cqox_platform.errors import DatasetError

    landing = _upload(env, tmp_path, "late-writer", _frame(20))
    assert _ingest(stack, instance, "late-writer", landing).success
    args = _store_args(stack, env)
    vault, key_name = args["vault"], "cqox-datasets"
    late_id: list[str] = []

    class LateWriter:
        """Rewraps like Vault, and on the first call stores a row on the old version without the lock."""

        def rotate(self, key):
            return vault.rotate(key)

        def set_min_decryption_version(self, key, version):
            return vault.set_min_decryption_version(key, version)

        def rewrap(self, key, ciphertext):
            if not late_id:
                with _db(stack) as conn:
                    (new_id,) = conn.execute(
                        "INSERT INTO datasets (id, name, status, rows, columns, metadata, encrypted_data_path, "
                        "wrapped_dek, key_name, key_version, plaintext_sha256) "
                        "SELECT gen_random_uuid(), 'late-row', status, rows, columns, metadata, encrypted_data_path,"
                        " wrapped_dek, key_name, key_version, plaintext_sha256 FROM datasets "
                        "WHERE wrapped_dek = %s RETURNING id::text",
                        (ciphertext,),
                    ).fetchone()
                late_id.append(new_id)
            return vault.rewrap(key, ciphertext)

    before = vault.key_info(key_name)["min_decryption_version"]
    try:
        with (
            _resources(stack)["postgres"].connect(autocommit=True) as conn,
            pytest.raises(DatasetError, match="still on an older key version"),
        ):
            rotate_dataset_keys(
                conn=conn,
                s3=args["s3"],
                bucket=args["bucket"],
                vault=LateWriter(),
                key_name=key_name,
                raise_min_decryption_version=True,
            )
        assert vault.key_info(key_name)["min_decryption_version"] == before
    finally:
        with _db(stack) as conn:
            conn.execute("DELETE FROM datasets WHERE id = ANY(%s::uuid[])", (late_id,))
