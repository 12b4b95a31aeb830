"""`cqox-platform`: the command line of the platform (stack, schema, metrics)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cqox_platform.errors import CqoxError


class _Group(click.Group):
    """Turns the platform's own errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CqoxError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_Group)
def main() -> None:
    """Reliability platform for CQOx: local stack, encryption, datasets, SLOs."""


# --- stack ---------------------------------------------------------------------------------------------------

_dir_option = click.option(
    "--dir",
    "stack_dir",
    type=click.Path(path_type=Path),
    default=None,
    envvar="CQOX_STACK_DIR",
    help="Stack directory (default .cqox, env CQOX_STACK_DIR).",
)


@main.group(cls=_Group)
def stack() -> None:
    """Start, inspect and stop the local stack of real services."""


@stack.command("up")
@_dir_option
@click.option("--port-base", type=int, default=None, help="Use consecutive ports from this one (new stacks).")
@click.option("--no-dagster", is_flag=True, help="Do not start the Dagster webserver and daemon.")
@click.option("--traffic", is_flag=True, help="Also run the synthetic CQOx traffic exporter (stable, canary).")
@click.option("--ha", is_flag=True, help="New stacks: etcd and three Patroni nodes behind HAProxy, not one node.")
@click.option("--sync", "ha_sync", is_flag=True, help="With --ha: Patroni synchronous mode (no loss on failover).")
def stack_up(
    stack_dir: Path | None, port_base: int | None, no_dagster: bool, traffic: bool, ha: bool, ha_sync: bool
) -> None:
    """Start every service (a no-op for those already running) and wait until each is healthy."""
    from cqox_platform.stack import Stack

    if ha_sync and not ha:
        raise click.UsageError("--sync is a mode of the HA cluster: use it with --ha.")
    st = Stack.from_dir(
        stack_dir,
        port_base=port_base,
        with_dagster=False if no_dagster else None,
        with_traffic=traffic or None,
        ha=ha or None,
        ha_sync=ha_sync or None,
    )
    statuses = st.up(progress=lambda msg: click.echo(f"  {msg}", err=True))
    _print_status(statuses)
    _print_ha(st)


@stack.command("down")
@_dir_option
def stack_down(stack_dir: Path | None) -> None:
    """Stop every service of the stack by its PID; data stays for the next `up`."""
    from cqox_platform.stack import Stack

    Stack.from_dir(stack_dir).down(progress=lambda msg: click.echo(f"  {msg}", err=True))
    click.echo("stack stopped")


@stack.command("status")
@_dir_option
def stack_status(stack_dir: Path | None) -> None:
    """What runs, on which port, with which PID. Exit 3 when something is not running and healthy."""
    from cqox_platform.stack import Stack

    st = Stack.from_dir(stack_dir)
    statuses = st.status()
    _print_status(statuses)
    healthy_cluster = _print_ha(st)
    if any(s.state != "running" for s in statuses) or not healthy_cluster:
        sys.exit(3)


@stack.command("env")
@_dir_option
def stack_env(stack_dir: Path | None) -> None:
    """Print `export` lines for the resources and clients: `eval "$(cqox-platform stack env)"`."""
    from cqox_platform.stack import Stack

    click.echo(Stack.from_dir(stack_dir).env_script(), nl=False)


# --- encryption ----------------------------------------------------------------------------------------------


def _platform_vault():
    """The platform's Vault identity from the environment (`eval "$(cqox-platform stack env)"`)."""
    import os

    from cqox_platform.resources.vault import VaultResource

    missing = [v for v in ("VAULT_ADDR", "CQOX_VAULT_APPROLE_FILE") if not os.environ.get(v)]
    if missing:
        raise click.UsageError(f'{", ".join(missing)} not set; run `eval "$(cqox-platform stack env)"` first.')
    return VaultResource(
        addr=os.environ["VAULT_ADDR"],
        cacert=os.environ.get("VAULT_CACERT"),
        approle_file=os.environ["CQOX_VAULT_APPROLE_FILE"],
    )


@main.command("encrypt")
@click.option("--in", "src", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", "dst", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--key", default="cqox-datasets", show_default=True, help="Vault Transit key wrapping the DEK.")
def encrypt_cmd(src: Path, dst: Path, key: str) -> None:
    """Encrypt a file with a fresh Vault data key; writes OUT and OUT.manifest.json."""
    from cqox_platform.crypto import encrypt_file

    manifest = encrypt_file(src, dst, _platform_vault().key_provider(key))
    click.echo(
        f"{dst}: {manifest.plaintext_bytes} bytes in {manifest.chunks} chunks, key {key} "
        f"v{manifest.key_version}; manifest {dst}.manifest.json"
    )


@main.command("decrypt")
@click.option("--in", "src", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", "dst", type=click.Path(dir_okay=False, path_type=Path), required=True)
def decrypt_cmd(src: Path, dst: Path) -> None:
    """Decrypt IN (with IN.manifest.json beside it) to OUT; OUT appears only if every check passed."""
    from cqox_platform.crypto.envelope import decrypt_file, load_manifest

    manifest = load_manifest(src)
    decrypt_file(src, dst, _platform_vault().key_provider(manifest.key_name), manifest)
    click.echo(f"{dst}: {manifest.plaintext_bytes} bytes, SHA-256 verified")


# --- datasets ------------------------------------------------------------------------------------------------


@main.group(cls=_Group)
def datasets() -> None:
    """Upload, list and read encrypted CQOx datasets."""


def _env(name: str) -> str:
    import os

    value = os.environ.get(name)
    if not value:
        raise click.UsageError(f'{name} is not set; run `eval "$(cqox-platform stack env)"` first.')
    return value


def _s3_client():
    import boto3

    from cqox_platform.stack.s3 import client_config

    return boto3.client("s3", endpoint_url=_env("CQOX_S3_ENDPOINT"), config=client_config())


def _postgres():
    import os

    from cqox_platform.resources.postgres import PostgresResource

    base = dict(
        host=_env("CQOX_PG_HOST"),
        port=int(_env("CQOX_PG_PORT")),
        dbname=_env("CQOX_PG_DB"),
        sslrootcert=_env("CQOX_PG_SSLROOTCERT"),
    )
    if os.environ.get("CQOX_PG_VAULT_ROLE"):
        return PostgresResource(
            **base, user="vault-issued", vault=_platform_vault(), vault_db_role=os.environ["CQOX_PG_VAULT_ROLE"]
        )
    return _postgres_admin()


def _postgres_admin():
    """The admin login (passfile): backups need a superuser for pg_basebackup and restore points."""
    from cqox_platform.resources.postgres import PostgresResource

    return PostgresResource(
        host=_env("CQOX_PG_HOST"),
        port=int(_env("CQOX_PG_PORT")),
        dbname=_env("CQOX_PG_DB"),
        sslrootcert=_env("CQOX_PG_SSLROOTCERT"),
        user=_env("CQOX_PG_USER"),
        passfile=_env("CQOX_PG_PASSFILE"),
    )


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Dataset name: letters, digits, '_', '.', '-'.")
def datasets_upload(file: Path, name: str) -> None:
    """Put FILE (CSV or Parquet) under landing/NAME/ for the upload sensor to ingest."""
    from cqox_platform.datasets.store import landing_key

    key = landing_key(name, file)
    bucket = _env("CQOX_S3_BUCKET")
    size = file.stat().st_size
    with click.progressbar(length=size, label=f"uploading {file.name}", file=sys.stderr) as bar:
        _s3_client().upload_file(str(file), bucket, key, Callback=bar.update)
    click.echo(f"s3://{bucket}/{key} ({size} bytes): the dataset_upload_sensor will ingest it as {name!r}")


@datasets.command("list")
@click.option("--limit", default=50, show_default=True)
def datasets_list(limit: int) -> None:
    """The newest datasets with status, size and key version."""
    from cqox_platform.datasets.store import list_datasets

    pg = _postgres()
    with pg.connect(autocommit=True) as conn:
        rows = list_datasets(conn, limit)
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

    vault = _platform_vault()
    pg = _postgres()
    with pg.connect(autocommit=True) as conn:
        row = get_dataset(
            s3=_s3_client(),
            bucket=_env("CQOX_S3_BUCKET"),
            conn=conn,
            dataset_id=dataset_id,
            provider_for=vault.key_provider,
            path_key=vault.read_secret(DATASET_PATH_KEY)["value"],
            out=out,
        )
    click.echo(f"{out}: dataset {row.name!r}, {row.rows} rows, SHA-256 verified")


# --- SLOs ----------------------------------------------------------------------------------------------------


@main.group(cls=_Group)
def slo() -> None:
    """SLO tooling for the local stack."""


@slo.command("backfill")
@click.option("--days", default=7, show_default=True, help="Whole UTC days before today to fill.")
@click.option("--wait/--no-wait", default=True, help="Wait until Prometheus serves the new blocks.")
def slo_backfill(days: int, wait: bool) -> None:
    """Backfill the stack's Prometheus with synthetic CQOx traffic history (job cqox-traffic) for past days.

    Days already backfilled are skipped (recorded in the stack's prometheus/backfilled-days.json), so running
    it again never writes conflicting samples.
    """
    import json
    from datetime import UTC, datetime, timedelta

    from cqox_platform.resources.prometheus import PrometheusResource
    from cqox_platform.slo.backfill import backfill, wait_for_series
    from cqox_platform.slo.traffic import Segment, VersionTraffic, history_openmetrics

    stack_dir = Path(_env("CQOX_STACK_DIR"))
    state = stack_dir / "prometheus" / "backfilled-days.json"
    done = set(json.loads(state.read_text())) if state.exists() else set()
    today = datetime.now(UTC).date()
    wanted = [today - timedelta(days=n) for n in range(days, 0, -1)]
    missing = [d for d in wanted if d.isoformat() not in done]
    if not missing:
        click.echo(f"nothing to do: {wanted[0]}..{wanted[-1]} already backfilled")
        return
    versions = {"stable": VersionTraffic(), "canary": VersionTraffic(rps=20.0)}
    segments = [
        Segment(
            datetime.combine(d, datetime.min.time(), UTC).timestamp(),
            datetime.combine(d + timedelta(days=1), datetime.min.time(), UTC).timestamp(),
            versions,
            reset=(i == 0 or missing[i - 1] != d - timedelta(days=1)),
        )
        for i, d in enumerate(missing)
    ]
    click.echo(f"backfilling {len(missing)} day(s) {missing[0]}..{missing[-1]} of one-minute history ...", err=True)
    backfill(
        history_openmetrics(segments, {"job": "cqox-traffic", "instance": "backfill"}),
        stack_dir / "prometheus" / "data",
    )
    state.write_text(json.dumps(sorted(done | {d.isoformat() for d in missing})))
    if wait:
        prometheus = PrometheusResource(url=_env("CQOX_PROMETHEUS_URL"))
        first = datetime.combine(missing[0] + timedelta(days=1), datetime.min.time(), UTC).timestamp()
        wait_for_series(
            lambda: bool(
                prometheus.query('count(http_requests_total{job="cqox-traffic",instance="backfill"})', at=first)
            ),
            timeout=240,
        )
    click.echo(f"backfilled {len(missing)} day(s); slo_report can now be materialized for them")


def _print_status(statuses) -> None:
    click.echo(f"{'SERVICE':<25}{'STATE':<11}{'PORT':<7}{'PID':<9}{'URL':<48}LOG")
    for s in statuses:
        color = {"running": "green", "unhealthy": "yellow"}.get(s.state, "red")
        state = click.style(f"{s.state:<11}", fg=color)
        click.echo(f"{s.name:<25}{state}{s.port or '-'!s:<7}{s.pid or '-'!s:<9}{s.url:<48}{s.log}")


def _print_ha(st) -> bool:
    """The Patroni cluster of an HA stack (see `ha status`). False when it is unhealthy."""
    if not st.config.ha:
        return True
    from cqox_platform.cli_ha import print_cluster

    cluster = st.service("patroni")
    healthy = print_cluster(cluster.client(), expected=[node.name for node in cluster.nodes])
    try:
        backends = st.service("postgres").backends()
    except Exception as exc:  # HAProxy down: the service table above already says so
        click.echo(f"HAProxy routing unknown: {type(exc).__name__}")
        return healthy
    for listener in ("postgres_primary", "postgres_replicas"):
        up = [
            name.split("/", 1)[1]
            for name, state in sorted(backends.items())
            if name.startswith(f"{listener}/") and state == "UP"
        ]
        click.echo(f"HAProxy {listener}: {', '.join(up) or click.style('no server UP', fg='red')}")
    return healthy


def _register_subcommands() -> None:
    from cqox_platform import cli_backup, cli_canary, cli_ha

    cli_backup.register(main)
    cli_canary.register(main)
    cli_ha.register(main)


_register_subcommands()

if __name__ == "__main__":
    main()
