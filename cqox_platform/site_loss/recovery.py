"""The isolated half of the site-loss drill: recover from the DR copy and the unseal key file, and measure it.

Run as ``python -m cqox_platform.site_loss.recovery PLAN OUT`` in the environment ``isolation.isolated_env``
builds; it refuses any other. Its steps, each timed:

1. **vault**: the newest Vault snapshot of the DR copy (SHA-256 and size checked) restored into a scratch OpenBao
   and unsealed with the key file; a root token is minted on it with the same keys, and the WAL archiver's
   AppRole (restored with the snapshot) gets a fresh secret id there. No token of the running OpenBao exists here.
2. **download, decrypt, extract, verify**: the DR copy's newest base backup that precedes the plan's restore
   point, read with the DR region's read-only key and unwrapped by the scratch OpenBao, then ``pg_verifybackup``.
3. **replay**: recovery to the restore point (paused there), then on to the end of the DR copy's WAL, promoted.
4. **checks**: row checksums at the point against what was captured there, ``amcheck`` after promotion.

The achieved RPO is the WAL and the time between the primary's position when the drill started and the last
record the DR copy let recovery replay. A projection scales each phase to 1 TiB and a day of WAL.
Nothing secret is written to the result: it names objects, counts and seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cqox_platform.archiver_clients import read_key_pair, s3_client, s3_client_from_file
from cqox_platform.backup.archive.archiver_settings import ArchiverSettings
from cqox_platform.backup.archive.records import BackupRecord, list_backups
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import parse_lsn
from cqox_platform.backup.restore.files import restore_files
from cqox_platform.backup.restore.recovery import (
    DEFAULT_WAL_PREFETCH,
    RecoveryTarget,
    configure_recovery,
    restore_command_for,
)
from cqox_platform.backup.restore.space import check_room_to_restore
from cqox_platform.backup.verify.drill import DrillResult, amcheck_indexes, compare_with_point, drill_verdict
from cqox_platform.backup.verify.plan import backups_before
from cqox_platform.errors import CqoxError
from cqox_platform.fsutil import write_file
from cqox_platform.pgserver import PG_OS_USER, ScratchCluster, free_port, pg_bindir
from cqox_platform.secrets import snapshots
from cqox_platform.secrets.scratch_vault import restored_vault
from cqox_platform.secrets.unseal import unseal_keys
from cqox_platform.secrets.vault_client import VaultClient
from cqox_platform.site_loss.isolation import require_isolated
from cqox_platform.site_loss.plan import SiteLossPlan

#: The projection's size: 1 TiB of data and a day of WAL at the rate docs/benchmarks.md projects with (50 GiB).
PROJECT_DATABASE_BYTES = 2**40
PROJECT_WAL_BYTES = 50 * 2**30
ROADMAP_RTO_SECONDS = 4 * 3600
PHASES = ("vault", "download", "decrypt", "extract", "verify", "replay", "checks")
#: What the drill adds to a recovery to prove it (row checksums at the point, amcheck): not part of the RTO, since
#: a real recovery opens the database without them.
PROOF_PHASES = ("checks",)
#: Phases that grow with the database (the rest: vault is fixed, replay grows with the WAL).
DATA_PHASES = ("download", "decrypt", "extract", "verify", "checks")


class SiteLossError(CqoxError):
    """The recovery could not go on; the message names what was missing and where."""


@dataclass
class SiteLossResult:
    status: str = "failed"
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    vault_phases: dict[str, float] = field(default_factory=dict)
    snapshot: str = ""
    snapshot_bytes: int = 0
    backup_id: str = ""
    database_bytes: int = 0
    point: str = ""
    tables_checked: int = 0
    rows_checked: int = 0
    indexes_checked: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    wal_bytes_replayed: int = 0
    restored_lsn: str = ""
    restored_commit_at: str = ""
    rpo_bytes: int | None = None
    rpo_seconds: float | None = None
    primary_read: str = ""
    projection: dict[str, float] = field(default_factory=dict)

    #: Replay's two legs: to the restore point (paused there), and from it to the end of the DR copy's WAL.
    replay_phases: dict[str, float] = field(default_factory=dict)

    @property
    def rto_seconds(self) -> float:
        """Site lost to database promoted: every phase but the drill's own proof."""
        return round(sum(v for k, v in self.seconds.items() if k not in PROOF_PHASES), 3)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rto_seconds": self.rto_seconds}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SiteLossResult:
        raw = json.loads(text)
        raw.pop("rto_seconds", None)
        return cls(**raw)


def projected(seconds: dict[str, float], database_bytes: int, wal_bytes: int) -> dict[str, float]:
    """Each phase scaled to ``PROJECT_DATABASE_BYTES`` and ``PROJECT_WAL_BYTES`` from its measured throughput:
    linear, on the same machine and S3, so an estimate of where the time goes, not a promise; ``total`` is the
    projected RTO (the proof phases are projected but not counted). Replay's fixed costs (two server starts, the
    end-of-archive probes) scale with it too, so with little WAL the projection is pessimistic."""
    if database_bytes <= 0:
        return {}
    data_scale = PROJECT_DATABASE_BYTES / database_bytes
    out = {}
    for phase, secs in seconds.items():
        if phase in DATA_PHASES:
            out[phase] = round(secs * data_scale, 1)
        elif phase == "replay":
            out[phase] = round(secs * PROJECT_WAL_BYTES / max(wal_bytes, 1), 1)
        else:
            out[phase] = round(secs, 1)
    out["total"] = round(sum(v for k, v in out.items() if k not in PROOF_PHASES), 1)
    return out


def probe_primary(endpoint: str, cacert: str, bucket: str, access_key: str, secret_key: str) -> str:
    """Try to list the primary bucket with the DR reader's key: the evidence that the recovery cannot read the
    primary site. Returns how it was refused; raises when the read succeeded (the drill would prove nothing)."""
    client = s3_client(endpoint, cacert or None, access_key, secret_key)
    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as exc:
        return f"refused: {exc.response.get('Error', {}).get('Code', 'error')}"
    except BotoCoreError as exc:
        return f"unreachable: {type(exc).__name__}"
    raise SiteLossError(
        f"the DR reader's key can list the primary bucket s3://{bucket} at {endpoint}: the drill's credentials "
        "reach the primary site, so it would not prove a recovery from the DR copy alone. Give the DR region "
        "keys the primary does not know."
    )


def _archiver_login(client: Any, role: str) -> tuple[str, str]:
    """The archiver AppRole's role id and a fresh secret id, both from the restored OpenBao (its root token)."""
    try:
        role_id = client.auth.approle.read_role_id(role_name=role)["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id(role_name=role)["data"]["secret_id"]
    except Exception as exc:
        raise SiteLossError(
            f"the restored OpenBao has no usable AppRole {role} ({type(exc).__name__}): the snapshot predates "
            "vault_config, or the role was removed; materialize vault_config, then vault_snapshot."
        ) from None
    return role_id, secret_id


def _fetch_settings(plan: SiteLossPlan, vault_addr: str, vault_ca: Path, login: tuple[str, str], home: Path) -> Path:
    """The scratch cluster's WAL-fetch settings: the restored OpenBao for data keys, the DR copy with its
    read-only key for the segments; the postgres OS user's file, mode 0600, removed with ``home``."""
    access, secret = read_key_pair(Path(plan.dr_reader_credentials_file))
    ca = home / "vault-ca.crt"
    shutil.copyfile(vault_ca, ca)
    ca.chmod(0o644)
    settings = ArchiverSettings(
        vault_addr=vault_addr,
        vault_cacert=str(ca),
        role_id=login[0],
        secret_id=login[1],
        s3_endpoint=plan.dr_endpoint,
        s3_cacert=plan.dr_cacert,
        bucket=plan.dr_bucket,
        transit_key=plan.transit_key,
        s3_access_key_id=access,
        s3_secret_access_key=secret,
    )
    path = home / "archiver-site-loss.json"
    write_file(path, settings.to_json(), mode=0o600, owner=PG_OS_USER)
    return path


def _backup_for(archive: Archive, plan: SiteLossPlan) -> BackupRecord:
    records = list_backups(archive)
    usable = backups_before(records, plan.point)
    if not usable:
        raise SiteLossError(
            f"{archive.where(archive.root + '/base/')} holds {len(records)} backup(s), none finished before restore "
            f"point {plan.point.name} ({plan.point.lsn}); materialize backups_dr_copy after a base backup."
        )
    return max(usable, key=lambda r: parse_lsn(r.stop_lsn))


def _restore_and_prove(
    archive: Archive,
    provider: Any,
    record: BackupRecord,
    plan: SiteLossPlan,
    settings_file: Path,
    home: Path,
    result: SiteLossResult,
    say: Any,
    replay_timeout: float,
) -> None:
    point = plan.point
    scratch = home / "restore"
    scratch.mkdir(mode=0o755)
    scratch.chmod(0o755)  # the postgres OS user traverses it to its data directory
    pgdata = scratch / "pgdata"
    pgdata.mkdir(mode=0o700)
    cluster = ScratchCluster(pgdata, scratch / "sock", free_port(), scratch / "server.log", pg_bindir())
    proof = DrillResult(
        drill_id=f"site-loss-{uuid.uuid4().hex[:8]}",
        backup_id=record.backup_id,
        bucket=archive.bucket,
        target=RecoveryTarget("restore_point", point.name, action="pause"),
        started_at=datetime.now(UTC),
    )
    try:
        # It replays to the point, then on to the end of the DR copy: room for all of the copy's WAL.
        everything = RecoveryTarget("end_of_archive")
        check_room_to_restore(archive, record, everything, scratch, "the site-loss drill's scratch directory")
        say(f"restoring {archive.where(record.object_key)} ({record.stored_bytes / 2**20:.1f} MiB) from the DR copy")
        files = restore_files(archive, provider, record, pgdata, say, pg_bindir())
        result.seconds.update({k: round(v, 3) for k, v in files.seconds.items()})
        command = restore_command_for(Path(plan.cli), settings_file, archive.bucket, DEFAULT_WAL_PREFETCH, pgdata)
        recovery = {"port": cluster.port, "socket_dir": cluster.socket_dir, "restore_command": command}
        configure_recovery(pgdata, **recovery, target=proof.target)
        say(f"replaying the DR copy's WAL to restore point {point.name}")
        started = time.monotonic()
        cluster.start()
        cluster.wait_paused(replay_timeout, say)
        replay = time.monotonic() - started
        result.replay_phases["to_point"] = round(replay, 3)
        started = time.monotonic()
        with cluster.connect(point.database) as conn:
            compare_with_point(conn, point, proof)
        checks = time.monotonic() - started
        say(f"at {point.name}: {proof.tables_checked} table(s) compared; replaying on to the end of the DR copy")
        # On to the newest record the DR copy holds: a site lost now is recovered to there, not to the point.
        cluster.stop()
        to_end = RecoveryTarget("end_of_archive")
        configure_recovery(pgdata, **recovery, target=to_end, extra={"recovery_target_name": ""})
        started = time.monotonic()
        cluster.start()
        cluster.wait_promoted(replay_timeout, say)
        result.replay_phases["to_end"] = round(time.monotonic() - started, 3)
        replay += result.replay_phases["to_end"]
        started = time.monotonic()
        with cluster.connect(point.database) as conn:
            lsn, commit_at = conn.execute(
                "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
            ).fetchone()
            amcheck_indexes(conn, proof)
        checks += time.monotonic() - started
        result.seconds.update(replay=round(replay, 3), checks=round(checks, 3))
        result.restored_lsn = lsn or ""
        result.restored_commit_at = commit_at.isoformat() if commit_at else ""
        result.wal_bytes_replayed = max(0, parse_lsn(lsn) - parse_lsn(record.start_lsn)) if lsn else 0
        primary = plan.primary
        if lsn and primary.timeline == point.timeline:
            result.rpo_bytes = max(0, parse_lsn(primary.lsn) - parse_lsn(lsn))
        if commit_at:
            reference = primary.last_commit_at or primary.observed_at
            result.rpo_seconds = round(max(0.0, (reference - commit_at).total_seconds()), 3)
        amcheck_errors = proof.details.get("amcheck_errors")
        status, error = drill_verdict(point, proof.tables_checked, proof.mismatches, amcheck_errors)
        result.status, result.error = ("passed" if status == "passed" else "failed"), error
    except Exception:
        result.error = f"{result.error or ''} server log: {cluster.log_tail(10)}".strip()
        raise
    finally:
        cluster.stop()
        result.tables_checked, result.indexes_checked = proof.tables_checked, proof.indexes_checked
        result.rows_checked = int(proof.details.get("rows_checked", 0))
        result.mismatches = proof.mismatches


def recover(
    plan: SiteLossPlan,
    probe: dict[str, str] | None = None,
    progress: Any = None,
) -> SiteLossResult:
    """The recovery from the DR copy and the unseal key file alone; never raises for a failed recovery (the
    result says failed, with the reason)."""
    say = progress or (lambda _m: None)
    result = SiteLossResult(point=plan.point.name)
    home = Path(tempfile.mkdtemp(prefix="cqox-site-loss-", dir=plan.workdir))
    home.chmod(0o755)
    try:
        require_isolated()
        dr = s3_client_from_file(plan.dr_endpoint, plan.dr_cacert or None, Path(plan.dr_reader_credentials_file))
        if probe:
            access, secret = read_key_pair(Path(plan.dr_reader_credentials_file))
            result.primary_read = probe_primary(
                probe["endpoint"], probe.get("cacert", ""), probe["bucket"], access, secret
            )
            say(f"the primary bucket s3://{probe['bucket']} with the drill's key: {result.primary_read}")
        started = time.monotonic()
        newest = snapshots.newest(dr, plan.dr_bucket)
        if newest is None:
            raise SiteLossError(
                f"s3://{plan.dr_bucket}/{snapshots.PREFIX} holds no Vault snapshot: without one nothing in the DR "
                "copy can be decrypted. Materialize vault_snapshot."
            )
        result.snapshot, result.snapshot_bytes = newest.where, newest.size
        keys = unseal_keys(Path(plan.unseal_key_file))
        with (
            snapshots.downloaded(dr, newest, home) as (path, _verified),
            restored_vault(path, keys, home, progress=say, keep=plan.keep_scratch) as vault,
        ):
            login = _archiver_login(vault.client, plan.archiver_role)
            result.seconds["vault"] = round(time.monotonic() - started, 3)
            result.vault_phases = dict(vault.seconds)
            settings_file = _fetch_settings(plan, vault.addr, vault.cacert, login, home)
            provider = VaultClient(vault.addr, str(home / "vault-ca.crt"), role_id=login[0], secret_id=login[1])
            archive = Archive(dr, plan.dr_bucket, plan.system_id)
            record = _backup_for(archive, plan)
            result.backup_id, result.database_bytes = record.backup_id, record.database_bytes
            _restore_and_prove(
                archive,
                provider.key_provider(plan.transit_key),
                record,
                plan,
                settings_file,
                home,
                result,
                say,
                plan.replay_timeout,
            )
    except Exception as exc:
        result.status = "failed"
        reason = str(exc) if isinstance(exc, CqoxError) else f"{type(exc).__name__}: {exc}"
        result.error = f"{reason}; {result.error}" if result.error else reason
    finally:
        if plan.keep_scratch:
            say(f"site-loss drill directory kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    for phase in PHASES:
        result.seconds.setdefault(phase, 0.0)
    result.projection = projected(result.seconds, result.database_bytes, result.wal_bytes_replayed)
    return result


def main(argv: list[str] | None = None) -> int:
    """``recovery PLAN OUT [PROBE]``: recover per the plan file, write the result (JSON, 0600) to OUT; progress
    goes to stderr. PROBE (JSON: endpoint, cacert, bucket of the primary) is read with the DR reader's key and
    must be refused. Exit 0 when a result was written, whatever it says."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m cqox_platform.site_loss.recovery PLAN OUT [PROBE_JSON]", file=sys.stderr)
        return 2
    out = Path(args[1])
    try:
        plan = SiteLossPlan.load(Path(args[0]))
        probe = json.loads(args[2]) if len(args) == 3 else None
    except (CqoxError, ValueError) as exc:
        print(f"site-loss drill: {exc}", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        result = recover(plan, probe, say)
    except Exception:  # a defect: the traceback goes to stderr, which the asset logs
        traceback.print_exc()
        return 3
    write_file(out, result.to_json(), mode=0o600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
