"""Group ``datasets``: the upload sensor against a fake bucket listing.

``encrypted_datasets`` and ``dataset_key_rotation`` write rows in PostgreSQL and use Vault Transit: a fake of
either is not worth it, the integration tests run them against the real services.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest

from assets import datasets
from sensors.datasets_sensor import dataset_upload_sensor
from tests.unit.fakes import FakeS3


@pytest.fixture(autouse=True)
def _bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CQOX_S3_BUCKET", "cqox-test")


def ingest_job() -> dg.JobDefinition:
    """The ingest job resolved with placeholder resources: only its run config schema is used."""
    placeholders = {key: dg.ResourceDefinition.none_resource() for key in ("s3", "postgres", "vault")}
    return dg.Definitions.merge(datasets.defs, dg.Definitions(resources=placeholders)).resolve_job_def(
        "dataset_ingest_job"
    )


def tick(listing: dict[str, str], cursor: str | None = None):
    FakeS3.listing = listing
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"s3": FakeS3()})
    return dataset_upload_sensor(context)


def test_each_new_upload_is_one_ingest_run_with_a_valid_config() -> None:
    result = tick({"landing/trial_a/part1.csv": "e1", "landing/trial_b/x.parquet": "e2", "landing/bad/x.txt": "e3"})
    assert isinstance(result, dg.SensorResult)
    assert [r.run_key for r in result.run_requests] == ["landing/trial_a/part1.csv@e1", "landing/trial_b/x.parquet@e2"]
    assert [r.partition_key for r in result.run_requests] == ["trial_a", "trial_b"]
    (add,) = result.dynamic_partitions_requests
    assert list(add.partition_keys) == ["trial_a", "trial_b"]
    job = ingest_job()
    for request in result.run_requests:
        dg.validate_run_config(job, request.run_config)  # raises if the job would refuse it
    assert json.loads(result.cursor) == {"landing/trial_a/part1.csv": "e1", "landing/trial_b/x.parquet": "e2"}


def test_a_seen_upload_is_not_requested_again_but_a_new_version_is() -> None:
    cursor = json.dumps({"landing/trial_a/part1.csv": "e1"})
    same = tick({"landing/trial_a/part1.csv": "e1"}, cursor)
    assert isinstance(same, dg.SkipReason) and "no new uploads" in same.skip_message
    changed = tick({"landing/trial_a/part1.csv": "e9"}, cursor)
    assert [r.run_key for r in changed.run_requests] == ["landing/trial_a/part1.csv@e9"]


def test_without_a_bucket_the_sensor_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CQOX_S3_BUCKET")
    assert "CQOX_S3_BUCKET" in tick({}).skip_message
