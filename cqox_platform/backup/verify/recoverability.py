"""Can we recover? One verdict over the evidence the platform already keeps, for the person who asks first.

The evidence is what ``backup info`` reads (each copy's backups, the drills that verified them, the recovery
window measured like the RPO) plus the newest drill of any backup (its RTO). The verdict reuses ``backup info``'s
own (``info_verdict``), so the command's exit code and the UI never disagree, and adds what a person expects
from "at a glance": a backup young enough for the daily schedule, and a last drill that passed inside the RTO.

Three answers, failing closed (missing or stale evidence is never "recoverable"):

- ``recoverable``: every copy passes ``backup info``'s verdict, the newest backup is at most a day (plus slack)
  old, the last drill passed within the RTO target, and a second-region copy is configured;
- ``not recoverable``: no readable copy holds a backup that a drill verified and whose own WAL is there: no
  restore is known to work;
- ``at risk``: anything in between; each reason says what failed and what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg

from cqox_platform.backup.verify.info import BackupEntry, CopyInfo, UnreadableCopy, info_verdict, read_copies
from cqox_platform.crypto.keys import DataKeyProvider

#: The RTO the operators hold us to (the roadmap's "< 4 h", alerted on in backup-alerts.yml).
RTO_TARGET_SECONDS = 4 * 3600.0
#: A daily backup plus two hours of slack: the base backup's freshness policy fails at the same age.
BACKUP_MAX_AGE_SECONDS = 26 * 3600.0


class Verdict(StrEnum):
    RECOVERABLE = "recoverable"
    AT_RISK = "at risk"
    NOT_RECOVERABLE = "not recoverable"


@dataclass(frozen=True)
class Evidence:
    """What the verdict is computed from, read at ``as_of``."""

    as_of: datetime
    copies: list[CopyInfo]
    unreadable: list[UnreadableCopy]
    #: The newest drill of any backup (``newest_drill``), or None when no drill ever ran.
    last_drill: dict[str, Any] | None
    #: Whether a second-region bucket is configured at all (a copy named "dr" is read when it is).
    dr_configured: bool


@dataclass(frozen=True)
class Row:
    """One line of the at-a-glance table: what, its value for people, the number behind it, the target, ok."""

    item: str
    value: str
    target: str
    ok: bool
    seconds: float | None = None


@dataclass(frozen=True)
class Recoverability:
    verdict: Verdict
    #: Why the verdict is not "recoverable", each with what to do next (empty when it is).
    reasons: list[str]
    rows: list[Row]
    as_of: datetime
    newest_backup_id: str | None = None
    newest_backup_at: datetime | None = None
    newest_backup_age_seconds: float | None = None
    proven_by_drill: str | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    wal_gaps: int | None = None
    dr_lag_seconds: float | None = None
    window_earliest: datetime | None = None
    window_latest: datetime | None = None
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One sentence for a check result or a log line."""
        if not self.reasons:
            return (
                f"recoverable: newest backup {self.newest_backup_id} proven by drill {self.proven_by_drill}, "
                f"RPO {_secs(self.rpo_seconds)}, last RTO {_secs(self.rto_seconds)}"
            )
        return f"{self.verdict}: " + "; ".join(self.reasons)


def newest_drill(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The newest drill of any backup, whatever its status (the last RTO measured, or why it failed)."""
    row = conn.execute(
        "SELECT drill_id, backup_id, passed, status, error, rto_seconds, finished_at FROM restore_drills "
        "WHERE repository = 'cqox' ORDER BY finished_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    keys = ["drill_id", "backup_id", "passed", "status", "error", "rto_seconds", "finished_at"]
    return dict(zip(keys, row, strict=True))


def read_evidence(
    conn: psycopg.Connection,
    s3: Any,
    provider: DataKeyProvider,
    bucket: str,
    dr_bucket: str | None,
    *,
    as_of: datetime,
    dr_s3: Any = None,
) -> Evidence:
    """The evidence as of now: both copies as ``backup info`` reads them (never switching WAL), and the last drill.

    ``dr_s3`` is the DR region's client (its read-only key); ``s3``, the primary's, when not given.
    """
    sources = [("primary", s3, bucket)] + ([("dr", dr_s3 or s3, dr_bucket)] if dr_bucket else [])
    _position, copies, unreadable = read_copies(conn, sources, provider, as_of=as_of)
    return Evidence(as_of, copies, unreadable, newest_drill(conn), dr_configured=bool(dr_bucket))


def _secs(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f} s"


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _utc(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def _restorable(copy: CopyInfo) -> bool:
    """The copy holds a backup a drill verified whose own WAL it holds too: something comes back from it."""
    return any(b.verified and not b.wal_missing for b in copy.backups)


@dataclass
class _Findings:
    """What each step of ``assess`` adds: table rows, reasons against "recoverable", numbers to plot."""

    rows: list[Row] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def number(self, name: str, value: float | None) -> float | None:
        """Record ``value`` for plotting (rounded); unknown values are left out, never plotted as a stand-in."""
        if value is None:
            return None
        self.numbers[name] = round(value, 1)
        return self.numbers[name]


def assess(
    evidence: Evidence,
    *,
    rpo_target_seconds: float,
    rto_target_seconds: float = RTO_TARGET_SECONDS,
    backup_max_age_seconds: float = BACKUP_MAX_AGE_SECONDS,
) -> Recoverability:
    """The verdict and the table rows from ``evidence`` (pure: no I/O, so every rule is table-tested)."""
    copies = {c.name: c for c in evidence.copies}
    primary, dr = copies.get("primary"), copies.get("dr")
    found = _Findings()
    found.reasons += [f"{u.error}; fix access to it, then look again" for u in evidence.unreadable]
    found.reasons += info_verdict(evidence.copies, rpo_target_seconds).reasons

    # The newest backup: from the primary copy, else from any copy that could be read.
    holder = primary if primary and primary.backups else next((c for c in evidence.copies if c.backups), None)
    newest = holder.backups[-1] if holder else None
    age = _newest_backup(found, newest, evidence.as_of, backup_max_age_seconds)
    _proof(found, newest)
    rto = _last_drill(found, evidence.last_drill, rto_target_seconds)
    rpo, gaps = _primary_window(found, primary, rpo_target_seconds)
    dr_lag = _dr_copy(found, dr, evidence.dr_configured, rpo_target_seconds)
    window = primary.window if primary else (dr.window if dr else None)
    earliest, latest = (window.earliest, window.latest) if window else (None, None)
    found.rows.append(
        Row(
            "recovery window",
            f"{_utc(earliest)} .. {_utc(latest)}" + ("" if primary else " (from the DR copy)"),
            "from the oldest backup to within the RPO of now",
            earliest is not None and latest is not None and primary is not None,
        )
    )

    verdict = Verdict.RECOVERABLE if not found.reasons else Verdict.AT_RISK
    if not any(_restorable(c) for c in evidence.copies):
        verdict = Verdict.NOT_RECOVERABLE
    if verdict is not Verdict.RECOVERABLE and not found.reasons:  # fail closed: never a bad verdict without a reason
        found.reasons.append(
            "no copy holds a verified backup with its WAL: take a backup and materialize restore_drill"
        )
    proven = newest.verified_by if newest else None
    return Recoverability(
        verdict=verdict,
        reasons=found.reasons,
        rows=found.rows,
        as_of=evidence.as_of,
        newest_backup_id=newest.record.backup_id if newest else None,
        newest_backup_at=newest.record.stop_datetime if newest else None,
        newest_backup_age_seconds=age,
        proven_by_drill=proven["drill_id"] if proven else None,
        rto_seconds=rto,
        rpo_seconds=rpo,
        wal_gaps=gaps,
        dr_lag_seconds=dr_lag,
        window_earliest=earliest,
        window_latest=latest,
        numbers=found.numbers,
    )


def _newest_backup(found: _Findings, newest: BackupEntry | None, as_of: datetime, max_age: float) -> float | None:
    """The newest backup and its age: older than the daily schedule allows is stale evidence."""
    target = f"at most {max_age / 3600:.0f} h old"
    if newest is None:
        found.rows.append(Row("newest backup", "none in any readable copy", target, False))
        return None
    stopped = newest.record.stop_datetime
    age = max(0.0, (as_of - stopped).total_seconds())
    fresh = age <= max_age
    value = f"{newest.record.backup_id} (ended {_utc(stopped)}, {_age(age)} ago)"
    found.rows.append(Row("newest backup", value, target, fresh, found.number("newest_backup_age_seconds", age)))
    if not fresh:
        found.reasons.append(
            f"the newest backup {newest.record.backup_id} ended {_age(age)} ago, more than {max_age / 3600:.0f} h: "
            "the daily backup did not run or failed; look at postgres_basebackup's last runs, then materialize it "
            "or run `cqox-platform backup create`"
        )
    return age


def _proof(found: _Findings, newest: BackupEntry | None) -> None:
    """Whether a drill verified the newest backup (``info_verdict`` already says what to run when not)."""
    proven = newest.verified_by if newest else None
    if newest is None:
        value = "no backup"
    elif proven:
        value = f"yes, drill {proven['drill_id']} ({_utc(proven.get('finished_at'))})"
    elif newest.last_drill is None:
        value = "no, no drill yet"
    else:
        value = f"no, its last drill {newest.last_drill['drill_id']} is {newest.last_drill['status']}"
    found.rows.append(Row("proven restorable", value, "a passing drill of the newest backup", proven is not None))


def _last_drill(found: _Findings, last: dict[str, Any] | None, target: float) -> float | None:
    """The last drill of any backup: it passed, and restored within the RTO target. Returns its RTO if it passed."""
    within = f"at most {_secs(target)} (4 h)"
    if last is None:
        found.rows.append(Row("last drill RTO", "no drill ever ran", within, False))
        found.reasons.append("no restore drill ever ran, so the RTO is unmeasured: materialize restore_drill")
        return None
    passed = last.get("status") == "passed"
    rto = None if last.get("rto_seconds") is None else float(last["rto_seconds"])
    value = f"{_secs(rto)} (drill {last['drill_id']} of backup {last['backup_id']}, {last['status']})"
    shown = found.number("rto_seconds", rto) if passed else (None if rto is None else round(rto, 1))
    found.rows.append(Row("last drill RTO", value, within, passed and rto is not None and rto <= target, shown))
    if not passed:
        found.reasons.append(
            f"the last drill {last['drill_id']} (backup {last['backup_id']}) is {last['status']}: "
            f"{last.get('error') or 'no error recorded'}; open restore_drill's last run, fix the cause and "
            "materialize restore_drill again"
        )
        return None
    if rto is None or rto > target:
        found.reasons.append(
            f"the last drill {last['drill_id']} took {_secs(rto)}, over the RTO target of {_secs(target)}: see its "
            "rto_breakdown for the slow phase"
        )
    return rto


def _primary_window(found: _Findings, primary: CopyInfo | None, target: float) -> tuple[float | None, int | None]:
    """The RPO (the primary window's lag, measured like ``wal_archive_status``'s) and the WAL gaps on the current
    timeline; ``info_verdict`` already gave the reasons."""
    within = f"at most {_secs(target)} (1 h)"
    if primary is None:
        found.rows.append(Row("RPO", "primary copy unreadable", within, False))
        found.rows.append(Row("WAL gaps", "primary copy unreadable", "0", False))
        return None, None
    window = primary.window
    rpo = window.lag_seconds
    if rpo is None:
        value = "unbounded: nothing of the current timeline archived"
    else:
        value = f"{_secs(rpo)} (newest segment {window.newest_segment})"
    ok = rpo is not None and rpo <= target
    found.rows.append(Row("RPO", value, within, ok, found.number("rpo_seconds", rpo)))
    if window.continuity_error:
        found.rows.append(Row("WAL gaps", f"cannot be walked: {window.continuity_error}", "0", False))
        return rpo, None
    if window.wal_from is None:
        found.rows.append(Row("WAL gaps", "no WAL archived since the oldest backup", "0", False))
        return rpo, None
    gaps = len(window.gaps)
    first = f", first {window.gaps[0]}" if window.gaps else ""
    found.rows.append(Row("WAL gaps", f"{gaps} in {window.wal_from}..{window.wal_to}{first}", "0", gaps == 0))
    found.number("wal_gaps", float(gaps))
    return rpo, gaps


def _dr_copy(found: _Findings, dr: CopyInfo | None, configured: bool, target: float) -> float | None:
    """The second region: configured, readable, holding backups, and its window within the RPO target of now."""
    within = f"at most {_secs(target)}"
    if not configured:
        found.rows.append(Row("DR copy lag", "no DR bucket configured", within, False))
        found.reasons.append(
            "no second-region bucket is configured (CQOX_S3_DR_BUCKET): losing the primary bucket loses every "
            "backup; set it and let backups_dr_copy run"
        )
        return None
    if dr is None:
        found.rows.append(Row("DR copy lag", "DR copy unreadable", within, False))
        return None
    lag = dr.window.lag_seconds
    newest = dr.backups[-1].record.backup_id if dr.backups else "none"
    value = f"{'no end' if lag is None else _secs(lag)} (newest backup there: {newest})"
    ok = lag is not None and lag <= target and bool(dr.backups)
    found.rows.append(Row("DR copy lag", value, within, ok, found.number("dr_lag_seconds", lag)))
    return lag
