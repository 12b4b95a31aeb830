"""Encrypted CQOx datasets (group ``datasets``): one dynamic partition per dataset, plus key rotation."""

import time

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.metadata import column, table
from cqox_platform.datasets.rotation import rotate_dataset_keys
from cqox_platform.datasets.store import ingest_upload, parse_landing_key
from cqox_platform.datasets.validation import DatasetSchema
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.secrets.vault_setup import DATASET_PATH_KEY, DATASETS_KEY
from cqox_platform.settings import get_settings

GROUP = "datasets"
datasets_partitions = dg.DynamicPartitionsDefinition(name="datasets")


class DatasetIngestConfig(dg.Config):
    """Which upload to ingest and the CQOx schema it must match."""

    landing_key: str
    key_name: str = DATASETS_KEY
    treatment: str = "treatment"
    outcome: str = "outcome"
    covariates: list[str] = []
    max_bytes: int = 256 * 1024 * 1024
    max_null_fraction: float = 0.2


@dg.asset(
    group_name=GROUP,
    partitions_def=datasets_partitions,
    kinds={"s3", "postgres", "vault"},
    deps=[dg.AssetKey("vault_config"), dg.AssetKey("cqox_schema")],
    description="A CQOx dataset validated, profiled, stored as Parquet encrypted with a fresh Vault data key "
    "under datasets/<id>/, tracked by a datasets row and an audit entry. Invalid uploads are quarantined.",
)
def encrypted_datasets(
    context: dg.AssetExecutionContext,
    config: DatasetIngestConfig,
    s3: S3Resource,
    postgres: PostgresResource,
    vault: VaultResource,
) -> dg.MaterializeResult:
    bucket = get_settings().require("s3_bucket")
    landing = parse_landing_key(config.landing_key)
    if landing.name != context.partition_key:
        raise dg.Failure(
            f"landing key {config.landing_key} belongs to dataset {landing.name!r}, "
            f"not partition {context.partition_key!r}."
        )
    schema = DatasetSchema(
        treatment=config.treatment,
        outcome=config.outcome,
        covariates=tuple(config.covariates),
        max_bytes=config.max_bytes,
        max_null_fraction=config.max_null_fraction,
    )
    path_key = vault.read_secret(DATASET_PATH_KEY)["value"]
    with postgres.connect(autocommit=True) as conn:
        result = ingest_upload(
            s3=s3.get_client(),
            bucket=bucket,
            key=config.landing_key,
            conn=conn,
            provider=vault.key_provider(config.key_name),
            path_key=path_key,
            schema=schema,
            log=context.log.info,
        )
    if result.status == "rejected":
        raise dg.Failure(
            description=f"upload {config.landing_key} rejected: " + "; ".join(result.problems),
            metadata={
                "problems": dg.MetadataValue.json(result.problems),
                "dataset_id": result.dataset_id,
                "quarantine": f"s3://{bucket}/{result.quarantine_key}",
            },
        )
    manifest, profile = result.manifest, result.profile
    assert manifest is not None
    rate = manifest.plaintext_bytes / max(result.seconds, 1e-6) / 2**20
    # Column names are the uploader's text: a table record holds them as data, never as markup.
    schema_table = table(
        [column("column"), column("dtype", description="pandas dtype"), column("nulls", "int", "null values")],
        [[c, t, profile["null_counts"][c]] for c, t in profile["dtypes"].items()],
    )
    return dg.MaterializeResult(
        metadata={
            "dataset_id": result.dataset_id,
            "rows": profile["rows"],
            "columns": profile["columns"],
            "treated": profile["treated"],
            "control": profile["control"],
            "schema": schema_table,
            "object": f"s3://{bucket}/{result.object_key}",
            "source_bytes": result.source_bytes,
            "parquet_bytes": manifest.plaintext_bytes,
            "encrypted_bytes": manifest.ciphertext_bytes,
            "key": f"{manifest.key_name} v{manifest.key_version}",
            "plaintext_sha256": manifest.plaintext_sha256,
            "seconds": round(result.seconds, 3),
            "mib_per_s": round(rate, 1),
        }
    )


class KeyRotationConfig(dg.Config):
    key_name: str = DATASETS_KEY
    raise_min_decryption_version: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"vault", "s3", "postgres"},
    deps=[dg.AssetKey("vault_config"), dg.AssetKey("cqox_schema")],
    description="Rotates the datasets' Transit key and rewraps every data key in manifests and rows; no data "
    "object is rewritten. Optionally retires old key versions (min_decryption_version).",
)
def dataset_key_rotation(
    context: dg.AssetExecutionContext,
    config: KeyRotationConfig,
    s3: S3Resource,
    postgres: PostgresResource,
    vault: VaultResource,
) -> dg.MaterializeResult:
    bucket = get_settings().require("s3_bucket")
    started = time.monotonic()
    with postgres.connect(autocommit=True) as conn:
        report = rotate_dataset_keys(
            conn=conn,
            s3=s3.get_client(),
            bucket=bucket,
            vault=vault,
            key_name=config.key_name,
            raise_min_decryption_version=config.raise_min_decryption_version,
            log=context.log.info,
        )
    return dg.MaterializeResult(
        metadata={
            "key": config.key_name,
            "old_version": report.old_version or 0,
            "new_version": report.new_version,
            "rewrapped": report.rewrapped,
            "already_current": report.already_current,
            "datasets_by_version_before": dg.MetadataValue.json(
                {str(k): v for k, v in report.by_version_before.items()}
            ),
            "min_decryption_version": report.min_decryption_version or 0,
            "seconds": round(time.monotonic() - started, 3),
        }
    )


dataset_ingest_job = dg.define_asset_job(
    "dataset_ingest_job",
    selection=[encrypted_datasets],
    description="Ingest one upload from the landing prefix into its dataset partition.",
)
dataset_key_rotation_job = dg.define_asset_job(
    "dataset_key_rotation_job",
    selection=[dataset_key_rotation],
    description="Rotate the datasets' Transit key and rewrap every dataset's data key.",
)
dataset_key_rotation_schedule = dg.ScheduleDefinition(
    job=dataset_key_rotation_job,
    cron_schedule="0 4 1 * *",
    execution_timezone="UTC",
    # On by default: a key nobody rotates is a key whose exposure never ends (see tests/unit/test_default_schedules).
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Monthly rotation of the datasets' Transit key.",
)

defs = dg.Definitions(
    assets=[encrypted_datasets, dataset_key_rotation],
    jobs=[dataset_ingest_job, dataset_key_rotation_job],
    schedules=[dataset_key_rotation_schedule],
)
