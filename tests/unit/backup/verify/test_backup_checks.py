"""The backup verdicts, drill selection, gauges and WAL listing of the core, from values (no cluster, no Dagster)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cqox_platform.backup.archive.wal_names import Segment, parse_lsn
from cqox_platform.backup.dr_copy import DrCopyResult
from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.retention import archived_wal_names
from cqox_platform.backup.verify.checks import (
    archiving_failing,
    dr_copy_verified,
    drill_passed,
    latest_backup_verified_restorable,
    retention_gate,
    wal_verdicts,
)
from cqox_platform.backup.verify.drill import DrillResult, drill_verdict
from cqox_platform.backup.verify.gauges import NEVER_ARCHIVED_SECONDS, base_backup_samples, wal_samples
from cqox_platform.backup.verify.plan import DrillMode, DrillPlanError, select_backup
from cqox_platform.backup.verify.proof import RestorePoint
from cqox_platform.backup.wal.status import unprotected
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX
from tests.helpers import BACKUP_STARTED, BACKUP_STOPPED, backup_record, wal_status


@pytest.mark.parametrize(
    ("failed_at", "archived_at", "failing"),
    [
        (None, BACKUP_STOPPED, False),  # never failed
        (BACKUP_STARTED, BACKUP_STOPPED, False),  # failed, then archived again: history
        (BACKUP_STOPPED, BACKUP_STARTED, True),  # failed after the last success
        (BACKUP_STARTED, None, True),  # failed and never archived
    ],
)
def test_archiver_failing_only_after_its_last_success(failed_at, archived_at, failing):
    status = wal_status(last_failed_time=failed_at, last_archived_time=archived_at, last_failed_wal="X")
    assert archiving_failing(status) is failing
    (_, _, healthy) = wal_verdicts(status, has_backup=True, rpo_target_seconds=900)
    assert healthy.passed is (not failing) and healthy.warn_only


@pytest.mark.parametrize(
    ("rpo", "target", "passed", "text"),
    [(30.0, 900, True, "RPO 30 s"), (901.0, 900, False, "RPO 901 s"), (None, 900, False, "never archived")],
)
def test_rpo_verdict(rpo, target, passed, text):
    rpo_check, _, _ = wal_verdicts(wal_status(rpo_seconds=rpo), has_backup=True, rpo_target_seconds=target)
    assert (rpo_check.name, rpo_check.passed) == ("wal_rpo_within_target", passed)
    assert text in rpo_check.description and rpo_check.metadata["target_seconds"] == target
    assert rpo_check.metadata["rpo_seconds"] == (rpo if rpo is not None else -1.0)


@pytest.mark.parametrize(
    ("has_backup", "gaps", "passed", "text"),
    [
        (True, [], True, "0 gap(s) in 8 segments"),
        (True, ["000000010000000000000005"], False, "1 gap(s)"),
        # The description names what is missing, as the Dagster UI shows only it at a glance.
        (True, ["000000010000000000000005"], False, "missing 000000010000000000000005"),
        (True, [f"0000000100000000000000{n:02X}" for n in range(5, 12)], False, "000000010000000000000009 and 2 more"),
        (False, [], False, "no base backup yet"),
    ],
)
def test_continuity_verdict_needs_an_anchor_and_no_gaps(has_backup, gaps, passed, text):
    _, continuity, _ = wal_verdicts(wal_status(gaps=gaps), has_backup=has_backup, rpo_target_seconds=900)
    assert continuity.passed is passed and text in continuity.description
    assert continuity.metadata["gaps"] == gaps


@pytest.mark.parametrize(
    "never_archived",
    [
        # A backup exists but no WAL segment was ever archived (archive_command failing since initdb).
        {
            "newest_archived_segment": None,
            "continuity_from": None,
            "continuity_to": None,
            "required_segments": 0,
            "archived_count": 0,
            "segments_in_archive": 0,
        },
        # Archived WAL exists, but none at or after the backup: nothing anchors continuity.
        {"continuity_from": None, "continuity_to": None, "required_segments": 0},
    ],
)
def test_continuity_fails_closed_when_no_wal_was_archived_since_the_backup(never_archived):
    """Issue 13 item 7: no gaps among zero required segments is not continuity."""
    _, continuity, _ = wal_verdicts(wal_status(**never_archived), has_backup=True, rpo_target_seconds=900)
    assert continuity.passed is False
    assert "no WAL archived" in continuity.description and "pg_stat_archiver" in continuity.description


# Primary on TL2 (branched at 0/30000060) at 0/32000000; the archive holds TL1 up to ...4F and nothing of TL2.
ON_TL2_NOTHING_ARCHIVED = {
    "timeline": 2,
    "current_lsn": "0/32000000",
    "timeline_start_lsn": "0/30000060",
    "newest_archived_segment": "00000001000000000000002F",
    "continuity_to": "00000001000000000000002F",
    "last_archived_wal": "00000002.history",
}


def test_unprotected_wal_is_measured_along_the_current_timeline():
    current = parse_lsn("0/32000000")
    # Only TL1 below the switch segment is on TL2's path: the 32 MiB written on TL2 are unprotected, and since
    # nothing of TL2 was ever archived their age is unbounded.
    assert unprotected(current, 2, Segment(1, 0x2F), 12.0) == (current - 0x30000000, None)
    # Archived on TL2 up to the current segment's start: bounded by that segment's age.
    assert unprotected(current + 100, 2, Segment(2, 0x31), 12.0) == (100, 12.0)
    assert unprotected(0x32000000, 2, Segment(2, 0x31), 12.0) == (0, 0.0)
    assert unprotected(current, 1, None, None) == (current, None)


def test_a_timeline_with_nothing_archived_since_its_switch_fails_every_blocking_check():
    status = wal_status(**ON_TL2_NOTHING_ARCHIVED, rpo_bytes=0x2000000, rpo_seconds=None)
    rpo, continuity, _ = wal_verdicts(status, has_backup=True, rpo_target_seconds=900)
    assert not rpo.passed and "never archived" in rpo.description
    assert not continuity.passed
    assert "nothing archived on timeline 2 since it began at 0/30000060" in continuity.description
    assert "00000001000000000000002F" in continuity.description


def test_a_timeline_whose_history_file_is_not_archived_fails_continuity():
    status = wal_status(**{**ON_TL2_NOTHING_ARCHIVED, "newest_archived_segment": None}, timeline_history_archived=False)
    _, continuity, _ = wal_verdicts(status, has_backup=True, rpo_target_seconds=900)
    assert not continuity.passed and "00000002.history" in continuity.description


def test_continuity_that_could_not_be_walked_fails_with_the_reason():
    status = wal_status(continuity_error="timeline 1 (the backup's) is not an ancestor of timeline 3.")
    _, continuity, _ = wal_verdicts(status, has_backup=True, rpo_target_seconds=900)
    assert not continuity.passed and "not an ancestor of timeline 3" in continuity.description


@pytest.mark.parametrize("mode", ["off", ""])
def test_archive_mode_off_fails_the_archiver_and_the_rpo(mode):
    rpo, _, archiver = wal_verdicts(wal_status(archive_mode=mode), has_backup=True, rpo_target_seconds=900)
    assert not archiver.passed and not archiver.warn_only and "archive_mode" in archiver.description
    assert not rpo.passed and "archive_mode" in rpo.description
    on_always = wal_verdicts(wal_status(archive_mode="always"), has_backup=True, rpo_target_seconds=900)
    assert all(v.passed for v in on_always)


def test_drill_verdicts():
    ok = DrillResult(
        "d1",
        "b1",
        "bucket",
        RecoveryTarget("restore_point", "p"),
        BACKUP_STARTED,
        BACKUP_STOPPED,
        passed=True,
        seconds={"a": 2.5},
        status="passed",
    )
    assert drill_passed(ok).passed and "2.5 s" in drill_passed(ok).description
    bad = DrillResult(
        "d2",
        "b1",
        "bucket",
        RecoveryTarget("backup_end"),
        BACKUP_STARTED,
        BACKUP_STOPPED,
        error="checksum of t differs",
    )
    assert not drill_passed(bad).passed and drill_passed(bad).description == "checksum of t differs"


POINT = RestorePoint("backup-b1", "0/3000000", 1, BACKUP_STOPPED, "cqox", {"public.t": {"rows": 1}})


@pytest.mark.parametrize(
    ("expected", "tables", "mismatches", "amcheck", "status", "text"),
    [
        (POINT, 1, [], None, "passed", None),
        # Issue 13 item 4: no captured point means nothing was compared; it verifies nothing.
        (None, 0, [], None, "partial", "no restore point was captured"),
        (replace(POINT, tables={}), 0, [], None, "partial", "captured no tables"),
        (POINT, 1, [{"table": "public.t"}], None, "failed", "1 table(s) differ"),
        (None, 0, [], ["i: bad"], "failed", "amcheck found corrupt indexes"),
    ],
)
def test_only_a_drill_that_compared_a_captured_point_verifies(expected, tables, mismatches, amcheck, status, text):
    got, error = drill_verdict(expected, tables, mismatches, amcheck)
    assert got == status
    assert (error is None) if text is None else (text in error)


def test_a_partial_drill_warns_and_does_not_pass():
    partial = DrillResult(
        "d3",
        "b1",
        "bucket",
        RecoveryTarget("backup_end"),
        BACKUP_STARTED,
        BACKUP_STOPPED,
        status="partial",
        error="partial: x",
    )
    verdict = drill_passed(partial)
    assert not verdict.passed and verdict.warn_only and verdict.metadata["status"] == "partial"


@pytest.mark.parametrize(
    ("verified", "last", "passed", "text"),
    [
        ({"b2"}, None, True, "newest backup b2 has a passing drill"),
        ({"b1"}, None, False, "newest backup b2 has no passing drill"),
        (set(), {"drill_id": "d9", "error": "replay stopped"}, False, "(last: replay stopped)"),
    ],
)
def test_newest_backup_verified(verified, last, passed, text):
    verdict = latest_backup_verified_restorable("b2", verified, last)
    assert verdict.name == "latest_backup_verified_restorable" and verdict.passed is passed
    assert text in verdict.description


@pytest.mark.parametrize(
    ("newest", "drill", "passed", "text"),
    [
        ("b2", {"drill_id": "b2-1", "status": "passed", "finished_at": BACKUP_STOPPED}, True, "verified by drill b2-1"),
        ("b2", None, False, "newest backup b2 has no passing drill yet"),
        ("b2", {"drill_id": "b2-2", "status": "partial", "finished_at": BACKUP_STOPPED}, False, "no passing drill"),
        (None, None, True, "nothing to delete"),
    ],
)
def test_retention_gate_names_the_drill_it_relied_on(newest, drill, passed, text):
    verdict = retention_gate(newest, drill)
    assert verdict.passed is passed and text in verdict.description
    assert verdict.metadata["drill_id"] == ((drill or {}).get("drill_id", "") if passed else "")


def test_dr_copy_verdict():
    assert dr_copy_verified(DrCopyResult(verified=3)).passed
    verdict = dr_copy_verified(DrCopyResult(verified=3, mismatched=["a"]))
    assert not verdict.passed and "1 differ" in verdict.description


def test_select_backup_defaults_to_the_newest_and_names_a_missing_one():
    records = [backup_record("b1"), backup_record("b2")]
    assert select_backup(records).backup_id == "b2"
    assert select_backup(records, "b1").backup_id == "b1"
    with pytest.raises(DrillPlanError, match="b3 is not in the bucket"):
        select_backup(records, "b3")
    with pytest.raises(DrillPlanError, match="no base backup"):
        select_backup([])
    assert DrillMode["random"] is DrillMode("random")  # run config names members; names equal values


def test_gauges():
    samples = dict((name, value) for name, _, value in base_backup_samples("7", backup_record("b1")))
    assert samples["cqox_backup_last_success_timestamp_seconds"] == BACKUP_STOPPED.timestamp()
    assert samples["cqox_backup_stored_bytes"] == 50
    wal = {name: value for name, _, value in wal_samples("7", wal_status(rpo_seconds=None, gaps=["x"]), failing=True)}
    assert wal["cqox_wal_rpo_seconds"] == NEVER_ARCHIVED_SECONDS
    assert wal["cqox_wal_archive_failing"] == 1.0 and wal["cqox_wal_archive_gaps"] == 1
    assert "cqox_recovery_window_start_timestamp_seconds" not in wal  # no backup: no window, not one from 1970


def test_the_recovery_window_starts_at_the_oldest_backups_end():
    oldest = backup_record("b1")
    wal = {name: value for name, _, value in wal_samples("7", wal_status(), failing=False, oldest=oldest)}
    assert wal["cqox_recovery_window_start_timestamp_seconds"] == oldest.stop_datetime.timestamp()


def test_archived_wal_names_from_manifests_and_data_objects():
    class Listing:
        root = "r/7"

        def list(self, prefix):
            assert prefix == "r/7/wal/"
            names = ["000000010000000000000003", "000000010000000000000002", "00000002.history"]
            return [{"Key": f"r/7/wal/{n}{suffix}"} for n in names for suffix in ("", MANIFEST_SUFFIX)]

    assert archived_wal_names(Listing()) == [
        "000000010000000000000002",
        "000000010000000000000003",
        "00000002.history",
    ]
