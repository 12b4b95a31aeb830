"""Watch the S3 landing prefix: one run per upload (run key = object key + ETag), partitions added on the fly."""

import json

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.datasets import dataset_ingest_job, datasets_partitions
from cqox_platform.datasets.store import LANDING, parse_landing_key
from cqox_platform.errors import InvalidDatasetNameError
from cqox_platform.settings import Settings, get_settings

#: Upper bound of run requests per tick, so a burst of uploads never pushes a tick past its timeout.
MAX_REQUESTS_PER_TICK = 25


@dg.sensor(
    job=dataset_ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New CSV/Parquet uploads under landing/<name>/ become dataset ingest runs.",
)
def dataset_upload_sensor(context: dg.SensorEvaluationContext, s3: S3Resource) -> dg.SensorResult | dg.SkipReason:
    bucket = get_settings().s3_bucket
    if not bucket:
        return dg.SkipReason(f"{Settings.env_name('s3_bucket')} is not set; run with the stack environment.")
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    client = s3.get_client()
    listed: dict[str, str] = {}
    requests, new_names, skipped = [], set(), []
    existing = set(context.instance.get_dynamic_partitions(datasets_partitions.name))
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=LANDING):
        for obj in page.get("Contents", []):
            key, etag = obj["Key"], obj["ETag"].strip('"')
            listed[key] = etag
            if seen.get(key) == etag or len(requests) >= MAX_REQUESTS_PER_TICK:
                continue
            try:
                landing = parse_landing_key(key)
            except InvalidDatasetNameError as exc:
                skipped.append(str(exc))
                continue
            if landing.name not in existing:
                new_names.add(landing.name)
            requests.append(
                dg.RunRequest(
                    run_key=f"{key}@{etag}",
                    partition_key=landing.name,
                    run_config={"ops": {"encrypted_datasets": {"config": {"landing_key": key}}}},
                    tags={"cqox/landing_key": key, "cqox/etag": etag},
                )
            )
    for message in skipped:
        context.log.warning(f"ignored landing object: {message}")
    # Forget keys that left the landing prefix; remember what was requested.
    cursor = {
        k: v
        for k, v in {**seen, **{r.tags["cqox/landing_key"]: r.tags["cqox/etag"] for r in requests}}.items()
        if k in listed
    }
    if not requests:
        return dg.SkipReason(f"no new uploads under s3://{bucket}/{LANDING} ({len(listed)} waiting, all requested)")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[datasets_partitions.build_add_request(sorted(new_names))] if new_names else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )


defs = dg.Definitions(sensors=[dataset_upload_sensor])
