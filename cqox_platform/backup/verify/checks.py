"""The verdicts on backups, WAL archiving, drills and the DR copy, computed from what was measured (pure).

Like ``ha/cluster_checks.py``: each function takes the result a core operation returned and says passed or not,
why in one sentence, and the numbers behind it. The asset modules only map a :class:`CheckVerdict` onto a
Dagster check result, so the rules can be read and table-tested here without Dagster or a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cqox_platform.backup.dr_copy import DrCopyResult
from cqox_platform.backup.verify.drill import PARTIAL, DrillResult
from cqox_platform.backup.wal.status import WalStatus

#: The RPO the operators hold us to (< 1 h); the WAL check's own default target is tighter.
RPO_TARGET_SECONDS = 3600.0


@dataclass(frozen=True)
class CheckVerdict:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    #: A warning: worth a look, never blocks what runs downstream.
    warn_only: bool = False


def archiving_failing(status: WalStatus) -> bool:
    """PostgreSQL's archiver failed after its last success (a failure followed by a success is history)."""
    if not status.last_failed_time:
        return False
    return not status.last_archived_time or status.last_failed_time > status.last_archived_time


def _archive_mode_off(status: WalStatus) -> str:
    return (
        f"archive_mode is {status.archive_mode or 'unset'!r}: PostgreSQL archives nothing, so every write from now "
        "on is unprotected. Set archive_mode = on (a restart) and check archive_command."
    )


def wal_rpo_within_target(status: WalStatus, target_seconds: float) -> CheckVerdict:
    """The unarchived WAL on the current timeline is younger than the target, and archiving is on at all."""
    passed = status.archiving_enabled and status.rpo_seconds is not None and status.rpo_seconds <= target_seconds
    if status.rpo_seconds is not None:
        rpo = f"{status.rpo_seconds:.0f} s"
    elif status.timeline > 1 and not status.archived_on_timeline:
        rpo = f"never archived on timeline {status.timeline}"
    else:
        rpo = "never archived"
    description = f"RPO {rpo} and {status.rpo_bytes} bytes (target {target_seconds:.0f} s)"
    if not status.archiving_enabled:
        description += f"; {_archive_mode_off(status)}"
    return CheckVerdict(
        "wal_rpo_within_target",
        passed,
        description,
        {
            "rpo_seconds": status.rpo_seconds if status.rpo_seconds is not None else -1.0,
            "rpo_bytes": status.rpo_bytes,
            "target_seconds": target_seconds,
            "timeline": status.timeline,
        },
    )


_WHERE_TO_LOOK = (
    "Check PostgreSQL's archive_mode and archive_command, pg_stat_archiver (last_failed_wal) and the `wal-push` "
    "lines in PostgreSQL's log; the archiver's settings come from `vault_config`."
)


def wal_archive_continuous(status: WalStatus, has_backup: bool) -> CheckVerdict:
    """Every segment from the oldest backup's start to the newest archived one on the current timeline's path.

    Fails closed: with no base backup there is no anchor; with no WAL archived since the backup there is
    nothing to be continuous (zero gaps among zero segments is not a pass: no backup restores without its WAL);
    and on a timeline whose history file or own segments never reached the archive, a restore stops at the
    switch point, so nothing written since is restorable, whatever the older timeline holds.
    """
    passed = False
    tli = status.timeline
    if not has_backup:
        description = "no base backup yet: continuity has no anchor"
    elif not status.timeline_history_archived:
        description = (
            f"timeline {tli}'s history file ({tli:08X}.history) is not in the archive: a restore cannot follow "
            f"the cluster onto timeline {tli}, so nothing written since it began at {status.timeline_start_lsn} "
            f"is restorable. {_WHERE_TO_LOOK}"
        )
    elif status.continuity_error:
        description = f"continuity cannot be walked: {status.continuity_error}"
    elif status.required_segments == 0 or status.newest_archived_segment is None:
        description = (
            f"no WAL archived since the oldest backup (archive holds {status.segments_in_archive} segment(s), "
            f"newest on timeline {tli}'s path {status.newest_archived_segment or 'none'}): no backup can be "
            f"restored. {_WHERE_TO_LOOK}"
        )
    elif tli > 1 and not status.archived_on_timeline:
        description = (
            f"nothing archived on timeline {tli} since it began at {status.timeline_start_lsn} (newest on its "
            f"path: {status.newest_archived_segment}, of an ancestor): nothing written since the switch is "
            f"restorable. {_WHERE_TO_LOOK}"
        )
    else:
        passed = not status.gaps
        description = (
            f"{len(status.gaps)} gap(s) in {status.required_segments} segments "
            f"{status.continuity_from}..{status.continuity_to} (timeline {tli})"
        )
        if status.gaps:  # named here too: the UI shows the description at a glance, the metadata on a click
            more = f" and {len(status.gaps) - 5} more" if len(status.gaps) > 5 else ""
            description += f": missing {', '.join(status.gaps[:5])}{more}"
    return CheckVerdict(
        "wal_archive_continuous",
        passed,
        description,
        {"gaps": status.gaps[:50], "required_segments": status.required_segments, "timeline": tli},
    )


def wal_archiver_healthy(status: WalStatus) -> CheckVerdict:
    """PostgreSQL archives (archive_mode on) and has not failed since its last success.

    A failure followed by a success is history and only warns; archive_mode off is an error, not a warning: no
    failure is ever counted then, and nothing is archived.
    """
    if not status.archiving_enabled:
        return CheckVerdict("wal_archiver_healthy", False, _archive_mode_off(status))
    failing = archiving_failing(status)
    return CheckVerdict(
        "wal_archiver_healthy",
        not failing,
        f"archiving is failing since {status.last_failed_time} at {status.last_failed_wal}"
        if failing
        else f"{status.failed_count} failure(s) since stats reset, none since the last success",
        warn_only=True,
    )


def wal_verdicts(status: WalStatus, *, has_backup: bool, rpo_target_seconds: float) -> list[CheckVerdict]:
    return [
        wal_rpo_within_target(status, rpo_target_seconds),
        wal_archive_continuous(status, has_backup),
        wal_archiver_healthy(status),
    ]


def drill_passed(result: DrillResult) -> CheckVerdict:
    """Passed only for a drill that verified its backup; a partial one (nothing compared) is a warning."""
    return CheckVerdict(
        "drill_passed",
        result.passed,
        result.error or f"restored and proven in {result.rto_seconds:.1f} s",
        {"rto_seconds": result.rto_seconds, "status": result.status},
        warn_only=result.status == PARTIAL,
    )


def latest_backup_verified_restorable(
    newest_backup_id: str, verified: set[str], newest_drill: dict[str, Any] | None
) -> CheckVerdict:
    """The newest backup has a verifying drill (status "passed", any source): what retention waits for."""
    passed = newest_backup_id in verified
    if passed:
        description = f"newest backup {newest_backup_id} has a passing drill"
    else:
        description = f"newest backup {newest_backup_id} has no passing drill"
        if newest_drill:
            description += f" (last: {newest_drill.get('error')})"
    return CheckVerdict(
        "latest_backup_verified_restorable",
        passed,
        description,
        {"newest_backup_id": newest_backup_id, "last_drill_id": (newest_drill or {}).get("drill_id", "")},
    )


def retention_gate(newest_backup_id: str | None, drill: dict[str, Any] | None) -> CheckVerdict:
    """Retention may delete only while the newest backup *now* in the archive has a drill that verified it.

    ``drill`` is the newest passing drill of that backup (``latest_drill(..., passed_only=True)``). Read at
    deletion time, not from ``restore_drill``'s last check: that check judged the newest backup of its own run,
    and a backup taken since (by the schedule, or `backup create` outside Dagster) has no drill yet. The verdict
    names the drill it read, so the record says what the deletion relied on.
    """
    if newest_backup_id is None:
        return CheckVerdict("retention_gate", True, "no backup in the archive: nothing to delete", {"drill_id": ""})
    if drill is None or drill.get("status") != "passed":
        return CheckVerdict(
            "retention_gate",
            False,
            f"newest backup {newest_backup_id} has no passing drill yet: nothing is deleted until one verifies it "
            f"(materialize restore_drill with backup_id {newest_backup_id})",
            {"newest_backup_id": newest_backup_id, "drill_id": ""},
        )
    return CheckVerdict(
        "retention_gate",
        True,
        f"newest backup {newest_backup_id} verified by drill {drill['drill_id']} (finished {drill['finished_at']})",
        {"newest_backup_id": newest_backup_id, "drill_id": drill["drill_id"]},
    )


def dr_copy_verified(result: DrCopyResult) -> CheckVerdict:
    """Fails while any copy differs from its source by SHA-256 (those units are retried by the next run)."""
    return CheckVerdict(
        "dr_copy_verified",
        not result.mismatched,
        f"{result.verified} copied object(s) verified by SHA-256; {len(result.mismatched)} differ or failed "
        "and are copied again next run",
        {"mismatched": result.mismatched[:50]},
    )
