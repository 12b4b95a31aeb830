"""Backup, restore and WAL push against pgBackRest, on the same ~1 GB pgbench database, in one run (issue 4).

Both sides compress with zstd and encrypt, and both store in the stack's S3 server over verified TLS:

| | cqox-platform | pgBackRest 2.45 (Debian) |
|---|---|---|
| backup | pg_basebackup tar -> zstd -3 (all cores) -> AES-256-GCM -> multipart | per file, zstd, AES-256-CBC, 2 procs |
| restore (files, no WAL replay) | download -> AES-256-GCM -> zstd -> tar extract | per file, 2 processes |
| WAL push | a process per segment: AppRole login, data key, zstd, GCM, 2 PUTs | archive-push, zstd, CBC |
| WAL push, async | `wal-push --async`: a daemon pushes ahead with a cached key | `archive-async=y` |
| key | a fresh data key per object from Vault Transit | one passphrase in the config file |

Each figure is the median of ``--repeat`` runs; the ratio is cqox-platform's time over pgBackRest's (target
<= 1.0). pgBackRest backs up with ``archive-check=n`` because this cluster archives with wal-push; our backup
includes waiting for its last WAL segment to be archived (pg_basebackup does that), pgBackRest's does not.

    eval "$(cqox-platform stack env)"   # stack up + vault_config materialized
    python -m benchmarks.backup_vs_pgbackrest --scale 68
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
import psycopg

from benchmarks._scratch import scratch_database
from cqox_platform.backup.archive import Archive
from cqox_platform.backup.archiver_settings import ArchiverSettings
from cqox_platform.backup.basebackup import create_base_backup
from cqox_platform.backup.restore import chown_tree, download_object, fetch_backup_manifest, pg_bindir, unpack_backup
from cqox_platform.installation import platform_cli
from cqox_platform.resources.vault import VaultResource
from cqox_platform.stack.s3 import client_config

PG = "postgres"
_bench_prefixes: list[str] = []


def _as_pg(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", PG, "--", *argv], capture_output=True, text=True, errors="replace", **kwargs
    )


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _pgbackrest_config(work: Path, pgdata: Path, port: int, socket_dir: str) -> Path:
    creds = ArchiverSettings.load(Path(os.environ["CQOX_WAL_ARCHIVER_CONFIG"]))
    vault = VaultResource(
        addr=os.environ["VAULT_ADDR"],
        cacert=os.environ["VAULT_CACERT"],
        approle_file=os.environ["CQOX_VAULT_APPROLE_FILE"],
    )
    s3 = vault.read_secret("cqox/backups/s3")
    endpoint = os.environ["CQOX_S3_ENDPOINT"].removeprefix("https://")
    host, s3_port = endpoint.split(":")
    # pgBackRest matches only DNS names of the certificate, so it reaches the server as localhost.
    ca = work / "ca.crt"
    shutil.copyfile(creds.s3_cacert, ca)
    conf = work / "pgbackrest.conf"
    conf.write_text(
        f"""[global]
repo1-type=s3
repo1-path=/{work.name}
repo1-s3-bucket={os.environ["CQOX_S3_BUCKET"]}
repo1-s3-endpoint={"localhost" if host == "127.0.0.1" else host}
repo1-storage-port={s3_port}
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-s3-key={s3["access_key_id"]}
repo1-s3-key-secret={s3["secret_access_key"]}
repo1-storage-ca-file={ca}
repo1-storage-verify-tls=y
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass={secrets.token_urlsafe(32)}
repo1-retention-full=2
compress-type=zst
process-max=2
start-fast=y
archive-check=n
log-level-console=warn
log-level-file=off
lock-path={work}/lock
spool-path={work}/spool

[cqox]
pg1-path={pgdata}
pg1-port={port}
pg1-socket-path={socket_dir}
pg1-user={PG}
"""
    )
    entry = pwd.getpwnam(PG)
    for path in (work, ca, conf):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    conf.chmod(0o600)
    return conf


def _wait_archived(dsn: str, timeout: float = 900) -> None:
    """Let the archiver catch up first: pg_basebackup waits for it, pgBackRest (archive-check=n) would not."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        current = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last[:24] >= current:
                return
            time.sleep(0.5)
    raise SystemExit("the WAL archiver did not catch up; is wal-push failing? (pg_stat_archiver)")


def _pgbackrest(conf: Path, *args: str) -> None:
    result = _as_pg(["pgbackrest", f"--config={conf}", "--stanza=cqox", *args])
    if result.returncode != 0:
        raise SystemExit(f"pgbackrest {' '.join(args)} failed: {result.stdout}{result.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68 is about 1 GB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--segments", type=int, default=8, help="WAL segments pushed per tool")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cqox-bench-backrest-", dir="/tmp"))
    work.chmod(0o755)
    s3 = boto3.client("s3", endpoint_url=os.environ["CQOX_S3_ENDPOINT"], config=client_config())
    vault = VaultResource(
        addr=os.environ["VAULT_ADDR"],
        cacert=os.environ["VAULT_CACERT"],
        approle_file=os.environ["CQOX_VAULT_APPROLE_FILE"],
    )
    provider = vault.key_provider("cqox-backups")
    pgdata = Path(os.environ["CQOX_PG_DATA"])
    socket_dir = str(pgdata.parent / "sock")
    try:
        with scratch_database() as info:
            print(f"pgbench -i -s {args.scale} ...", flush=True)
            dsn = psycopg.conninfo.make_conninfo(**info)
            subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), dsn], check=True, capture_output=True)
            with psycopg.connect(**info, autocommit=True) as conn:
                size = conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0]
                sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
                port = int(conn.execute("SHOW port").fetchone()[0])
            print(f"cluster size {size / 2**30:.2f} GiB", flush=True)
            conf = _pgbackrest_config(work, pgdata, port, socket_dir)
            _pgbackrest(conf, "stanza-create")
            archive = Archive(s3, os.environ["CQOX_S3_BUCKET"], f"bench-{sysid}")
            _bench_prefixes.append(archive.system_id)
            admin_dsn = os.environ["CQOX_PG_DSN"]
            results: dict[str, dict[str, list[float]]] = {"backup": {}, "restore": {}}
            records = []
            for _ in range(args.repeat):
                _wait_archived(admin_dsn)
                results["backup"].setdefault("cqox", []).append(
                    _timed(
                        lambda: records.append(
                            create_base_backup(
                                archive, provider, dsn=admin_dsn, pg_basebackup=str(pg_bindir() / "pg_basebackup")
                            )
                        )
                    )
                )
                results["backup"].setdefault("pgbackrest", []).append(
                    _timed(lambda: _pgbackrest(conf, "backup", "--type=full"))
                )
            record = records[-1]
            print(
                f"cqox backup: {record.database_bytes / 2**20:.0f} MiB -> {record.stored_bytes / 2**20:.0f} MiB stored"
            )
            for i in range(args.repeat):
                target = work / f"restore-cqox-{i}"
                target.mkdir(mode=0o700)

                def ours(target=target):
                    staged = work / "base.enc"
                    download_object(archive, record.object_key, staged, record.stored_bytes, lambda _m: None)
                    unpack_backup(staged, fetch_backup_manifest(archive, record), provider, target, "bench")
                    staged.unlink()

                results["restore"].setdefault("cqox", []).append(_timed(ours))
                shutil.rmtree(target)
                theirs_dir = work / f"restore-backrest-{i}"
                theirs_dir.mkdir(mode=0o700)
                chown_tree(theirs_dir)
                results["restore"].setdefault("pgbackrest", []).append(
                    _timed(lambda d=theirs_dir: _pgbackrest(conf, "restore", f"--pg1-path={d}", "--type=immediate"))
                )
                shutil.rmtree(theirs_dir)

            results.update(_wal_push(work, pgdata, conf, args.segments))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        # Leave the bucket as it was: pgBackRest's repository, our benchmark backups and WAL copies.
        bucket = os.environ["CQOX_S3_BUCKET"]
        for prefix in (f"{work.name}/", *[f"postgres/{p}/" for p in _bench_prefixes]):
            Archive(s3, bucket, "-").purge(prefix)

    print(f"\n{'operation':<12}{'cqox-platform s':>16}{'pgBackRest s':>14}{'ratio':>8}  target <= 1.0")
    for op, sides in results.items():
        ours_m, theirs_m = statistics.median(sides["cqox"]), statistics.median(sides["pgbackrest"])
        verdict = "met" if ours_m <= theirs_m else "NOT met"
        print(f"{op:<12}{ours_m:>16.2f}{theirs_m:>14.2f}{ours_m / theirs_m:>8.2f}  {verdict}")


def _fake_pgdata(work: Path, pgdata: Path, names: list[str], sources: list[Path], sysid: bytes | None) -> Path:
    """A data directory with copies of real segments and their .ready files, for one tool's run."""
    fake = work / f"fake-pgdata-{secrets.token_hex(4)}"
    (fake / "global").mkdir(parents=True)
    (fake / "pg_wal" / "archive_status").mkdir(parents=True)
    control = (pgdata / "global" / "pg_control").read_bytes()
    (fake / "global" / "pg_control").write_bytes((sysid + control[8:]) if sysid else control)
    shutil.copyfile(pgdata / "PG_VERSION", fake / "PG_VERSION")
    for name, src in zip(names, sources, strict=True):
        shutil.copyfile(src, fake / "pg_wal" / name)
        (fake / "pg_wal" / "archive_status" / f"{name}.ready").touch()
    chown_tree(fake)
    fake.chmod(0o755)
    return fake


def _push_all(fake: Path, names: list[str], command) -> list[float]:
    """Call archive_command for each segment in order, as PostgreSQL does, marking each .done afterwards."""
    times = []
    for name in names:
        times.append(_timed(lambda n=name: _check(_as_pg(command(str(fake / "pg_wal" / n))))))
        status = fake / "pg_wal" / "archive_status"
        os.replace(status / f"{name}.ready", status / f"{name}.done")
    return times


def _wal_push(work: Path, pgdata: Path, conf: Path, count: int) -> dict[str, dict[str, list[float]]]:
    """Per-segment archive_command time, sync and async, on copies of real segments under unused names."""
    sources = sorted(p for p in (pgdata / "pg_wal").iterdir() if len(p.name) == 24)[:count]
    ours_cfg = os.environ["CQOX_WAL_ARCHIVER_CONFIG"]
    out: dict[str, dict[str, list[float]]] = {}
    for mode, log in (("wal push", "FE"), ("wal push async", "FF")):
        names = [f"00000001000000{log}{n:08X}" for n in range(len(sources))]
        # Our archive is keyed by the data directory's system id: a fresh one keeps these copies apart.
        fake_sysid = secrets.token_bytes(8)
        _bench_prefixes.append(str(int.from_bytes(fake_sysid, "little")))
        ours = _fake_pgdata(work, pgdata, names, sources, fake_sysid)
        extra = ["--async"] if mode.endswith("async") else []
        cli = str(platform_cli())
        out.setdefault(mode, {})["cqox"] = _push_all(
            ours,
            names,
            lambda w, d=ours, c=cli, e=extra: [c, "wal-push", w, "--config", ours_cfg, "--pgdata", str(d), *e],
        )
        theirs = _fake_pgdata(work, pgdata, names, sources, None)
        flag = ["--archive-async"] if mode.endswith("async") else []
        out[mode]["pgbackrest"] = _push_all(
            theirs,
            names,
            lambda w, d=theirs, f=flag: [
                "pgbackrest",
                f"--config={conf}",
                "--stanza=cqox",
                f"--pg1-path={d}",
                *f,
                "archive-push",
                w,
            ],
        )
    return out


def _check(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0:
        raise SystemExit(f"{result.args}: {result.stderr or result.stdout}")


if __name__ == "__main__":
    main()
