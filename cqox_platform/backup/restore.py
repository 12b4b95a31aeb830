"""Turn a base backup in S3 back into a running PostgreSQL: stream the files in, verify them, recover.

The files arrive through ``restore_stream`` (parallel ranged GETs -> decrypt -> zstd -> tar, no staging copy).
Each phase is timed because the RTO a drill reports is their sum, and knowing which phase dominates is what
lets an operator shrink it; in the streamed pipeline the phases overlap, so ``download`` is the time the
pipeline waited on the network, ``decrypt`` the AES-GCM work and ``extract`` the rest of its wall time.
``download_object`` and ``unpack_backup`` are the former staged path, kept for benchmarks that compare both.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import zstandard

from cqox_platform.backup.archive import Archive, ArchiveError
from cqox_platform.backup.records import BackupRecord
from cqox_platform.backup.restore_stream import INCOMPLETE_MARKER, TimedSink, mark_incomplete, stream_restore
from cqox_platform.backup.restore_stream import safe_member as _safe_member
from cqox_platform.backup.wal_prefetch_client import fast_restore_command, prefetch_spool
from cqox_platform.crypto.envelope import Manifest, decrypt_from
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import CqoxError
from cqox_platform.fsutil import make_dir, own, own_tree, read_file, write_file
from cqox_platform.settings import child_env

Progress = Callable[[str], None]
PG_OS_USER = "postgres"


class RestoreError(CqoxError):
    """A restore could not complete; the message names the object or the step."""


@dataclass
class RecoveryTarget:
    """Where recovery stops: a named restore point, a time, or the end of the backup (``immediate``)."""

    kind: str  # "restore_point" | "time" | "backup_end" | "end_of_archive"
    value: str = ""

    def settings(self) -> dict[str, str]:
        if self.kind == "restore_point":
            return {"recovery_target_name": self.value}
        if self.kind == "time":
            return {"recovery_target_time": self.value, "recovery_target_inclusive": "on"}
        if self.kind == "backup_end":
            return {"recovery_target": "immediate"}
        if self.kind == "end_of_archive":
            return {}
        raise RestoreError(f"unknown recovery target kind {self.kind!r}")


def download_object(archive: Archive, key: str, dest: Path, size: int, progress: Progress) -> float:
    """Stream one object to a local file (no ranged GETs); returns seconds."""
    started = time.monotonic()
    body = archive.get_stream(key)
    if body is None:
        raise RestoreError(f"{archive.where(key)} is missing: the backup is incomplete or was deleted.")
    done, last = 0, started
    with open(dest, "wb") as fh:
        while True:
            chunk = archive.call("downloading", key, body.read, 8 * 1024 * 1024)
            if not chunk:
                break
            fh.write(chunk)
            done += len(chunk)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                rate = done / (last - started) / 2**20
                progress(f"download: {done / 2**20:.0f} of {size / 2**20:.0f} MiB ({rate:.1f} MiB/s)")
    if size and done != size:
        raise RestoreError(f"{archive.where(key)} is {done} bytes, the backup record says {size}: truncated.")
    return time.monotonic() - started


def unpack_backup(
    encrypted: Path, manifest: Manifest, provider: DataKeyProvider, pgdata: Path, where: str
) -> tuple[float, float]:
    """Decrypt, decompress and extract into ``pgdata``; returns (decrypt seconds, extract seconds)."""
    started = time.monotonic()
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []
    decrypt_seconds = [0.0]

    def produce() -> None:
        t0 = time.monotonic()
        with open(write_fd, "wb", buffering=1 << 20) as pipe_out:
            timed = TimedSink(None)
            try:
                with (
                    open(encrypted, "rb") as src,
                    zstandard.ZstdDecompressor().stream_writer(pipe_out, closefd=False) as unzstd,
                ):
                    timed.inner = unzstd
                    decrypt_from(src, timed, manifest, provider)
            except BaseException as exc:
                errors.append(exc)
        decrypt_seconds[0] = time.monotonic() - t0 - timed.seconds

    producer = threading.Thread(target=produce, name="restore-decrypt", daemon=True)
    producer.start()
    try:
        # ignore_zeros: a backup is the server's tar, then a tar holding backup_manifest (see basebackup). A header
        # skipped as invalid cannot pass unnoticed: AES-GCM authenticated the bytes and the manifest names every file.
        with (
            open(read_fd, "rb", buffering=1 << 20) as pipe_in,
            tarfile.open(fileobj=pipe_in, mode="r|", ignore_zeros=True) as tar,
        ):
            for member in tar:
                tar.extract(_safe_member(member, where), pgdata, set_attrs=True)
    except tarfile.TarError as exc:
        producer.join()
        if errors:
            raise _explain(errors[0], where) from None
        raise RestoreError(f"{where} is not a valid tar stream after decryption: {exc}") from None
    producer.join()
    if errors:
        raise _explain(errors[0], where) from None
    total = time.monotonic() - started
    return decrypt_seconds[0], max(total - decrypt_seconds[0], 0.0)


def _explain(exc: BaseException, where: str) -> RestoreError:
    if isinstance(exc, zstandard.ZstdError):
        return RestoreError(f"{where} does not decompress: {exc}")
    return RestoreError(f"{where} failed verification: {exc}")


def chown_tree(root: Path, user: str = PG_OS_USER) -> None:
    """Hand the restored tree to ``user`` without following any link in it (see ``cqox_platform.fsutil``)."""
    own_tree(root, user)
    own(root, mode=0o700, directory=True)


def postgres_cannot_reach(path: Path) -> Path | None:
    """The first directory on the way to ``path`` the postgres OS user cannot traverse, or None.

    Checked as that user (``runuser ... test -x``), before anything is downloaded: pg_verifybackup and the server
    run as postgres, and would otherwise fail hours later with "Permission denied".
    """
    if os.geteuid() != 0:
        return None
    path = Path(os.path.abspath(path))
    for directory in [*reversed(path.parents), path]:
        if not directory.exists():
            return None  # created by root with the default umask: traversable
        if subprocess.run(as_pg_user(["test", "-x", str(directory)]), capture_output=True).returncode != 0:
            return directory
    return None


def as_pg_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_OS_USER, "--", *argv]
    return argv


def verify_backup(pgdata: Path, pg_bindir: Path, *, checksums: bool = True) -> float:
    """``pg_verifybackup`` against the backup_manifest that came inside the tar (WAL is checked by replay).

    ``checksums=False`` when the stream already compared every file's CRC32C (``manifest_checksums``): it then
    checks the manifest's own checksum, missing and extra files and sizes without re-reading every byte.
    """
    started = time.monotonic()
    verify = [str(pg_bindir / "pg_verifybackup"), "--no-parse-wal", "--quiet", "--ignore", INCOMPLETE_MARKER]
    if not checksums:
        verify.append("--skip-checksums")
    result = subprocess.run(
        as_pg_user([*verify, str(pgdata)]),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RestoreError(f"pg_verifybackup found problems in {pgdata}: {(result.stderr or result.stdout).strip()}")
    return time.monotonic() - started


def configure_recovery(
    pgdata: Path,
    *,
    port: int,
    socket_dir: Path,
    restore_command: str,
    target: RecoveryTarget,
    extra: dict[str, str] | None = None,
) -> None:
    """Make ``pgdata`` a private recovering cluster: unix socket only, no archiving, this restore target.

    Private on purpose, for drills and for real restores alike: clients must not reach a restored copy (and
    write to it, or take it for the primary) until a person decides to open it (``listen_addresses``).
    """
    settings = {
        "port": str(port),
        "listen_addresses": "",
        "unix_socket_directories": str(socket_dir),
        "archive_mode": "off",
        "ssl": "off",
        "restore_command": restore_command,
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
        "shared_buffers": "256MB",
        "hot_standby": "on",
        # A Patroni node's postgresql.conf names its own data directory's files; the copy must use its own.
        "hba_file": str(pgdata / "pg_hba.conf"),
        "ident_file": str(pgdata / "pg_ident.conf"),
        **target.settings(),
        **(extra or {}),
    }
    lines = ["", "# Written by cqox-platform restore: a private recovering copy."]
    lines += [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in settings.items()]
    # pgdata belongs to postgres by now: replace files by name, never write through a link (cqox_platform.fsutil).
    auto_conf = pgdata / "postgresql.auto.conf"
    try:
        current = read_file(auto_conf).decode()
    except FileNotFoundError:
        current = ""
    write_file(auto_conf, current + "\n".join(lines) + "\n", mode=0o600, owner=PG_OS_USER)
    write_file(
        pgdata / "pg_hba.conf",
        "# Restored copy: only local connections through the private socket directory.\nlocal all all trust\n",
        mode=0o600,
        owner=PG_OS_USER,
    )
    write_file(pgdata / "recovery.signal", "", mode=0o600, owner=PG_OS_USER)


#: Segments the restore_command's prefetcher keeps verified ahead of replay (``wal-fetch --prefetch``); 0 is off.
DEFAULT_WAL_PREFETCH = 8


def restore_command_for(
    cli: Path,
    settings_file: Path,
    bucket: str | None = None,
    prefetch: int = DEFAULT_WAL_PREFETCH,
    pgdata: Path | None = None,
) -> str:
    """The restore_command of a restored or drilled cluster: prefetching by default (same exit-code contract).

    With ``pgdata`` (the cluster's data directory) a segment already prefetched is handed over by the shell
    (``fast_restore_command``), without starting the CLI.
    """
    command = f"{shlex.quote(str(cli))} wal-fetch %f %p --config {shlex.quote(str(settings_file))}"
    command += f" --bucket {shlex.quote(bucket)}" if bucket else ""
    if not prefetch:
        return command
    command += f" --prefetch {int(prefetch)}"
    if pgdata is None:
        return command
    return fast_restore_command(prefetch_spool(settings_file, Path(pgdata).resolve(), bucket), f"exec {command}")


class ScratchCluster:
    """A restored cluster started by pg_ctl as the postgres user, reachable only through its socket."""

    def __init__(self, pgdata: Path, socket_dir: Path, port: int, log: Path, pg_bindir: Path) -> None:
        self.pgdata, self.socket_dir, self.port, self.log, self.pg_bindir = pgdata, socket_dir, port, log, pg_bindir

    def start_files(self) -> None:
        """The socket directory and the log, owned by postgres (created without following a planted link)."""
        make_dir(self.socket_dir, mode=0o700, owner=PG_OS_USER)
        if not self.log.exists():
            write_file(self.log, "", mode=0o600, owner=PG_OS_USER)
        own(self.log, owner=PG_OS_USER)

    def start(self) -> None:
        self.start_files()
        # A clean environment: the restored server and its restore_command see no client settings of ours.
        env = child_env(drop_prefixes=("AWS_", "PG", "VAULT_", "BAO_", "CQOX_"))
        subprocess.run(
            as_pg_user([str(self.pg_bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log), "-W", "start"]),
            check=True,
            capture_output=True,
            env=env,
        )

    def postmaster_alive(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
            return True
        except (OSError, ValueError, IndexError):
            return False

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=PG_OS_USER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def wait_promoted(self, timeout: float, progress: Progress) -> None:
        """Wait until recovery reached its target and the server promoted; fail fast if it died."""
        started = time.monotonic()
        deadline = started + timeout
        last_note = started
        while time.monotonic() < deadline:
            if not self.postmaster_alive() and time.monotonic() - started > 3:
                raise RestoreError(
                    f"recovery stopped: the restored server exited. Its log ends with:\n{self.log_tail()}"
                )
            try:
                with self.connect() as conn:
                    in_recovery, lsn = conn.execute(
                        "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn(), '0/0')::text"
                    ).fetchone()
                if not in_recovery:
                    return
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    progress(f"replaying WAL: at {lsn}")
            except psycopg.OperationalError as exc:
                if "authentication failed" in str(exc):  # waiting would never end
                    raise RestoreError(f"cannot log in to the restored server: {exc}") from None
                pass  # not accepting connections until consistent
            time.sleep(0.2)
        raise RestoreError(f"recovery did not finish within {timeout:.0f} s. Log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.postmaster_alive():
            stop_immediately(self.pgdata, self.pg_bindir)


def stop_immediately(pgdata: Path, bindir: Path | None = None) -> None:
    """Stop a restored server without a checkpoint (it is thrown away or inspected, never kept running)."""
    subprocess.run(
        as_pg_user([str((bindir or pg_bindir()) / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"]),
        capture_output=True,
    )


def pg_bindir() -> Path:
    """PostgreSQL 15's binaries (Debian keeps pg_ctl and pg_verifybackup out of PATH)."""
    for candidate in (Path("/usr/lib/postgresql/15/bin"),):
        if (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RestoreError("pg_ctl not found: install Debian package postgresql-15.")


def fetch_backup_manifest(archive: Archive, record: BackupRecord) -> Manifest:
    text = archive.get_bytes(record.manifest_key)
    if text is None:
        raise ArchiveError(f"{archive.where(record.manifest_key)} is missing: the backup cannot be decrypted.")
    return Manifest.from_json(text, where=archive.where(record.manifest_key))


@dataclass(frozen=True)
class RestoredFiles:
    """Seconds per phase of putting a backup's files in place, and the key version that decrypted them."""

    seconds: dict[str, float]
    key_version: int


def restore_files(
    archive: Archive,
    provider: DataKeyProvider,
    record: BackupRecord,
    pgdata: Path,
    progress: Progress,
    bindir: Path | None = None,
) -> RestoredFiles:
    """Stream the backup into ``pgdata`` (no staging copy), hand it to postgres, pg_verifybackup it.

    ``pgdata`` carries ``INCOMPLETE_MARKER`` from before the first byte until the verification passed: a restore
    killed in between leaves a directory that names itself incomplete and has no ``global/pg_control``.
    """
    manifest = fetch_backup_manifest(archive, record)
    mark_incomplete(pgdata, f"backup {record.backup_id} ({archive.where(record.object_key)})")
    streamed = stream_restore(archive, record.object_key, record.stored_bytes, manifest, provider, pgdata, progress)
    seconds = dict(streamed.seconds)
    if streamed.checksums_verified:
        progress(f"restore: {streamed.files} files match backup_manifest's CRC32C (checked while extracting)")
    chown_tree(pgdata)
    seconds["verify"] = verify_backup(pgdata, bindir or pg_bindir(), checksums=not streamed.checksums_verified)
    (pgdata / INCOMPLETE_MARKER).unlink()
    return RestoredFiles(seconds, manifest.key_version)
