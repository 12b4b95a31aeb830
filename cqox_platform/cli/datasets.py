"""`cqox-platform datasets upload | list | get`: encrypted CQOx datasets (core clients, no Dagster)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import cqox_platform.cli.context as context
from cqox_platform.cli.group import ErrorGroup
from cqox_platform.cli.json_output import echo_json, json_option

if TYPE_CHECKING:
    from cqox_platform.datasets.store import DatasetRow

#: ``datasets list --json``: raised when a reader could trip over a change.
LIST_SCHEMA_VERSION = 1


@click.group("datasets", cls=ErrorGroup)
def datasets() -> None:
    """Upload, list and read encrypted CQOx datasets."""


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Dataset name: letters, digits, '_', '.', '-'.")
def datasets_upload(file: Path, name: str) -> None:
    """Put FILE (CSV or Parquet) under landing/NAME/ for the upload sensor to ingest."""
    from cqox_platform.datasets.store import landing_key

    key = landing_key(name, file)
    bucket = context.bucket()
    size = file.stat().st_size
    with click.progressbar(length=size, label=f"uploading {file.name}", file=sys.stderr) as bar:
        context.s3().upload_file(str(file), bucket, key, Callback=bar.update)
    click.echo(f"s3://{bucket}/{key} ({size} bytes): the dataset_upload_sensor will ingest it as {name!r}")


def list_json(rows: list[DatasetRow]) -> dict[str, Any]:
    """What ``datasets list --json`` prints: the newest datasets first, as the datasets table holds them."""
    return {
        "schema_version": LIST_SCHEMA_VERSION,
        "datasets": [
            {
                "id": r.id,
                "name": r.name,
                "status": r.status,
                "rows": r.rows,
                "columns": r.columns,
                "key_name": r.key_name,
                "key_version": r.key_version,
                "plaintext_sha256": r.plaintext_sha256,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ],
    }


@datasets.command("list")
@click.option("--limit", default=50, show_default=True)
@json_option
def datasets_list(limit: int, as_json: bool) -> None:
    """The newest datasets with status, size and key version."""
    from cqox_platform.datasets.store import list_datasets

    pg = context.postgres()
    with pg.connect(autocommit=True) as conn:
        rows = list_datasets(conn, limit)
    if as_json:
        echo_json(list_json(rows))
        return
    click.echo(f"{'ID':<38}{'NAME':<24}{'STATUS':<10}{'ROWS':>9}{'COLS':>6}  {'KEY':<20}CREATED")
    for r in rows:
        key = f"{r.key_name} v{r.key_version}" if r.key_name else "-"
        click.echo(
            f"{r.id:<38}{r.name[:23]:<24}{r.status:<10}{r.rows or 0:>9}{r.columns or 0:>6}  {key:<20}"
            f"{r.created_at:%Y-%m-%d %H:%M}"
        )


@datasets.command("get")
@click.argument("dataset_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def datasets_get(dataset_id: str, out: Path) -> None:
    """Decrypt dataset DATASET_ID to OUT (Parquet), verifying its SHA-256."""
    from cqox_platform.datasets.store import get_dataset
    from cqox_platform.secrets.vault_setup import DATASET_PATH_KEY

    vault = context.vault()
    pg = context.postgres()
    with pg.connect(autocommit=True) as conn:
        row = get_dataset(
            s3=context.s3(),
            bucket=context.bucket(),
            conn=conn,
            dataset_id=dataset_id,
            provider_for=vault.key_provider,
            path_key=vault.read_secret(DATASET_PATH_KEY)["value"],
            out=out,
        )
    click.echo(f"{out}: dataset {row.name!r}, {row.rows} rows, SHA-256 verified")
