"""The observer's half of the site-loss drill: what it notes while the primary site still stands.

Before the recovery is started in isolation, the drill records where the primary was (its WAL position and the
time, for the achieved RPO) and chooses the restore point to prove: the newest captured point whose segment the
DR copy holds, after a backup the DR copy holds. Those are facts for the plan; the recovery never asks the
primary for anything.
"""

from __future__ import annotations

import psycopg

from cqox_platform.backup.archive.records import list_backups
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import segment_name, segment_number
from cqox_platform.backup.verify.plan import backups_before
from cqox_platform.backup.verify.proof import RestorePoint, load_restore_point
from cqox_platform.site_loss.plan import PrimaryPosition

#: How many of the newest captured points are looked at (points are captured every 15 minutes and with each
#: backup; a DR copy more than this many behind has lost its recovery window anyway, which its alert pages on).
POINTS_LOOKED_AT = 50


def primary_position(conn: psycopg.Connection) -> PrimaryPosition:
    """The primary's current WAL position, timeline, time and (with ``track_commit_timestamp``) newest commit."""
    lsn, timeline, now, last_commit = conn.execute(
        """
        SELECT pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint()), now(),
               CASE WHEN current_setting('track_commit_timestamp') = 'on'
                    THEN (pg_last_committed_xact()).timestamp END
        """
    ).fetchone()
    return PrimaryPosition(lsn=lsn, timeline=int(timeline), observed_at=now, last_commit_at=last_commit)


def newest_point_in_copy(conn: psycopg.Connection, archive: Archive) -> tuple[RestorePoint | None, str]:
    """The newest captured restore point the copy in ``archive`` can reach (a backup before it, its segment
    archived there), or ``None`` with the reason."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM restore_points WHERE database = current_database() AND repository = 'cqox' "
            "ORDER BY created_at DESC LIMIT %s",
            [POINTS_LOOKED_AT],
        ).fetchall()
    ]
    if not names:
        return None, "no restore point was captured yet (materialize wal_archive_status or take a base backup)"
    backups = list_backups(archive)
    if not backups:
        return None, f"{archive.where(archive.root + '/base/')} holds no base backup (materialize backups_dr_copy)"
    for name in names:
        point = load_restore_point(conn, name)
        if point is None or not backups_before(backups, point):
            continue
        segment = segment_name(point.timeline, segment_number(point.lsn_int))
        if archive.head(archive.wal_manifest_key(segment)) is not None:
            return point, ""
    return None, (
        f"none of the newest {len(names)} restore points has both a base backup before it and its WAL segment in "
        f"{archive.where(archive.root + '/')} (materialize backups_dr_copy; the copy trails the primary)"
    )
