"""``backup info``'s recovery window and verdict, and its JSON against the shipped schemas (values only, no stack)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.wal_names import Segment, TimelineSwitch, parse_lsn
from cqox_platform.backup.verify.checks import RPO_TARGET_SECONDS
from cqox_platform.backup.verify.info import (
    INFO_SCHEMA_VERSION,
    LIST_SCHEMA_VERSION,
    BackupEntry,
    ClusterPosition,
    CopyInfo,
    backup_json,
    backup_wal_missing,
    copy_json,
    info_verdict,
    position_json,
    recovery_window,
    unreadable_copy_json,
    window_end,
)
from cqox_platform.cli.json_schema import load_schema
from tests.helpers import BACKUP_STOPPED, backup_record

AS_OF = BACKUP_STOPPED + timedelta(hours=2)
#: Segments 2..9 of timeline 1: the backup's own (2) and everything after it.
ARCHIVED = {Segment(1, n).name for n in range(2, 10)}
#: The cluster writes in segment 10 (not archived yet).
WRITING = ClusterPosition(1, "0/A000100")
DRILL = {"drill_id": "d-1", "passed": True, "status": "passed", "rto_seconds": 42.5, "finished_at": AS_OF}


def _copy(
    *,
    verified: bool = True,
    archived: set[str] = ARCHIVED,
    sealed_ago: float = 60.0,
    position: ClusterPosition = WRITING,
    ids: tuple[str, ...] = ("20260301T030000Z",),
    name: str = "primary",
) -> CopyInfo:
    records = [backup_record(i) for i in ids]
    entries = [
        BackupEntry(r, backup_wal_missing(r, archived), DRILL if verified else None, DRILL if verified else None)
        for r in records
    ]
    window = recovery_window(records, position, archived, {}, AS_OF - timedelta(seconds=sealed_ago), AS_OF)
    return CopyInfo(name, f"s3://{name}-bucket/postgres/7/", entries, window, len(archived))


def test_the_window_runs_from_the_oldest_backups_end_to_the_newest_sealed_segment() -> None:
    window = _copy(sealed_ago=90).window
    assert window.earliest == BACKUP_STOPPED
    assert window.latest == AS_OF - timedelta(seconds=90) and window.lag_seconds == 90
    assert window.newest_segment == Segment(1, 9).name and window.unarchived_bytes == 0x100
    assert (window.wal_from, window.wal_to, window.gaps) == (Segment(1, 2).name, Segment(1, 9).name, [])


def test_with_nothing_unarchived_the_window_ends_now() -> None:
    at_boundary = ClusterPosition(1, "0/A000000")  # the end of segment 9: all of it archived
    window = _copy(position=at_boundary, sealed_ago=7200).window
    assert window.latest == AS_OF and window.lag_seconds == 0 and window.unarchived_bytes == 0


def test_a_segment_sealed_after_the_reading_began_never_ends_the_window_after_it() -> None:
    # as_of is taken before the archive is listed; a segment S3 received in between is newer than as_of.
    newest = Segment(1, 9)
    latest, _ = window_end(ClusterPosition(1, "0/A000100"), newest, AS_OF + timedelta(seconds=0.235), AS_OF)
    assert latest == AS_OF


def test_the_window_never_ends_before_the_newest_backup_whose_stop_is_archived() -> None:
    # A WAL manifest's seal time has whole seconds, a backup's stop microseconds: the segment sealed just after the
    # backup stopped can read as sealed 0.5 s before it. The backup still restores to its stop.
    stopped = AS_OF - timedelta(seconds=9.5)
    records = [replace(backup_record("20260301T030000Z"), stop_time=stopped.isoformat())]
    window = recovery_window(
        records, ClusterPosition(1, "0/A000100"), ARCHIVED, {}, AS_OF - timedelta(seconds=10), AS_OF
    )
    assert window.latest == stopped and window.earliest <= window.latest


def test_a_timeline_with_nothing_of_its_own_archived_has_no_end() -> None:
    newest = Segment(1, 9)
    latest, unarchived = window_end(ClusterPosition(2, "0/A000100"), newest, AS_OF, AS_OF)
    assert latest is None and unarchived == parse_lsn("0/A000100") - newest.end_lsn


def test_a_backups_own_wal_and_gaps_after_it_are_named() -> None:
    record = replace(backup_record("20260301T030000Z"), stop_wal=Segment(1, 3).name)
    assert backup_wal_missing(record, ARCHIVED - {Segment(1, 3).name}) == [Segment(1, 3).name]
    window = _copy(archived=ARCHIVED - {Segment(1, 5).name}).window
    assert window.gaps == [Segment(1, 5).name]


def test_the_wal_walk_follows_timeline_switches_and_says_why_it_cannot() -> None:
    records = [backup_record("20260301T030000Z")]
    archived = {*ARCHIVED, Segment(2, 9).name, Segment(2, 10).name}
    switched = {2: [TimelineSwitch(1, parse_lsn("0/9000100"))]}
    on_two = ClusterPosition(2, "0/B000100")
    window = recovery_window(records, on_two, archived, switched, AS_OF, AS_OF)
    assert (window.wal_to, window.gaps, window.continuity_error) == (Segment(2, 10).name, [], None)
    lost_history = recovery_window(records, on_two, archived, {}, AS_OF, AS_OF)
    assert lost_history.continuity_error and "history" in lost_history.continuity_error


def test_a_verified_recent_copy_passes() -> None:
    assert info_verdict([_copy(), _copy(name="dr")], RPO_TARGET_SECONDS).passed


def test_an_unverified_newest_backup_fails_naming_it_and_what_to_run() -> None:
    verdict = info_verdict([_copy(), _copy(verified=False, name="dr")], RPO_TARGET_SECONDS)
    (reason,) = verdict.reasons
    assert not verdict.passed
    assert "20260301T030000Z" in reason and "dr copy" in reason and "restore_drill" in reason


@pytest.mark.parametrize(
    ("copy", "expected"),
    [
        (dict(sealed_ago=RPO_TARGET_SECONDS + 1), "behind the RPO target of 3600 s"),
        (dict(ids=()), "holds no backup"),
        (dict(archived=ARCHIVED - {Segment(1, 2).name}), "lacks its own WAL"),
        (dict(archived=ARCHIVED - {Segment(1, 6).name}), "1 WAL segment(s) missing"),
        (dict(archived=set()), "has no end"),
    ],
)
def test_each_way_a_copy_cannot_deliver_the_rpo_fails_with_its_reason(copy: dict, expected: str) -> None:
    verdict = info_verdict([_copy(**copy)], RPO_TARGET_SECONDS)
    assert not verdict.passed and any(expected in r for r in verdict.reasons), verdict.reasons


def test_a_window_just_inside_the_target_passes() -> None:
    assert info_verdict([_copy(sealed_ago=RPO_TARGET_SECONDS - 1)], RPO_TARGET_SECONDS).passed


def test_the_rpo_target_is_the_roadmaps_hour() -> None:
    assert RPO_TARGET_SECONDS == 3600


# --- JSON against the shipped schemas -----------------------------------------------------------------------


def _validate(command: str, document: dict) -> None:
    schema = load_schema(command)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)


def _errors(command: str, document: dict) -> list[str]:
    """What the schema of ``command`` finds wrong in ``document`` (empty: valid), each with where it is."""
    schema = load_schema(command)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def _report(copies: list[dict], passed: bool, reasons: list[str]) -> dict:
    return {
        "schema_version": INFO_SCHEMA_VERSION,
        "as_of": AS_OF.isoformat(),
        "cluster": position_json(WRITING),
        "rpo_target_seconds": RPO_TARGET_SECONDS,
        "copies": copies,
        "verdict": {"passed": passed, "errors": [], "reasons": reasons},
    }


def test_backup_info_json_validates_for_readable_and_unreadable_copies() -> None:
    good, unverified = _copy(), _copy(verified=False, archived=set(), name="dr")
    assert _errors("backup-info", _report([copy_json(good), copy_json(unverified)], False, ["x"])) == []
    down = unreadable_copy_json("dr", "s3://dr-bucket/postgres/7/", "the dr copy cannot be read: unreachable")
    assert _errors("backup-info", _report([copy_json(good), down], False, [])) == []


def test_an_unreadable_copy_with_an_empty_backup_list_is_not_valid_json() -> None:
    """Fail closed in the format too: a copy with an error cannot claim zero backups."""
    down = {**unreadable_copy_json("dr", "s3://b/postgres/7/", "down"), "backups": []}
    with pytest.raises(jsonschema.ValidationError):
        _validate("backup-info", _report([down], False, []))


def test_backup_list_json_validates() -> None:
    record = backup_record("20260301T030000Z")
    listing = {
        "schema_version": LIST_SCHEMA_VERSION,
        "where": "s3://b/postgres/7/",
        "newest_backup_id": record.backup_id,
        "newest_verified": True,
        "backups": [backup_json(record, verified_by=DRILL, last_drill={**DRILL, "status": "partial"})],
    }
    assert _errors("backup-list", listing) == []
    empty = {**listing, "newest_backup_id": None, "newest_verified": False, "backups": []}
    assert _errors("backup-list", empty) == []


def test_the_documented_example_validates_against_the_schema() -> None:
    """docs/backups.md shows what `backup info --json` prints; it must stay something the schema accepts."""
    page = (Path(__file__).resolve().parents[4] / "docs" / "backups.md").read_text()
    example = re.search(r"<!-- backup-info-json-example -->\n```json\n(.*?)\n```", page, re.S)
    assert example, "docs/backups.md lost its backup info --json example"
    _validate("backup-info", json.loads(example.group(1)))


# --- the recovery window per copy: proven start and gauges ---------------------------------------------------------


def test_the_proven_start_is_the_oldest_verified_backup_whose_wal_the_copy_holds() -> None:
    from cqox_platform.backup.verify.info import BackupEntry, with_earliest_verified
    from tests.helpers import copy_info, drill_row

    def at(hours: int) -> BackupRecord:
        stop = BACKUP_STOPPED + timedelta(hours=hours)
        return replace(backup_record(f"20260301T0{hours}0000Z"), stop_time=stop.isoformat())

    drill = drill_row()
    lost_wal = BackupEntry(at(1), ["000000010000000000000002"], drill, drill)  # verified, its WAL gone from here
    unverified = BackupEntry(at(2), [], None, None)
    proven = BackupEntry(at(3), [], drill, drill)
    window = copy_info().window
    assert with_earliest_verified(window, [lost_wal, unverified, proven]).earliest_verified == at(3).stop_datetime
    assert with_earliest_verified(window, [lost_wal, unverified]).earliest_verified is None
    assert copy_info(verified=False).window.earliest_verified is None
    assert copy_info().window.earliest_verified == backup_record("x").stop_datetime


def test_window_gauges_are_labelled_by_copy_and_an_unreadable_copy_reads_as_no_end() -> None:
    from cqox_platform.backup.verify.gauges import (
        RECOVERY_WINDOW_EARLIEST,
        RECOVERY_WINDOW_LATEST,
        recovery_window_samples,
    )
    from tests.helpers import copy_info

    primary, unproven = copy_info("primary"), copy_info("dr", verified=False)
    samples = recovery_window_samples("7", [primary, unproven])
    by = {(name, labels["copy"]): value for name, labels, value in samples}
    assert by[(RECOVERY_WINDOW_EARLIEST, "primary")] == primary.window.earliest_verified.timestamp()
    assert by[(RECOVERY_WINDOW_LATEST, "primary")] == primary.window.latest.timestamp()
    assert (RECOVERY_WINDOW_EARLIEST, "dr") not in by  # nothing proven: no stand-in start
    assert by[(RECOVERY_WINDOW_LATEST, "dr")] == unproven.window.latest.timestamp()
    assert all(labels["system_id"] == "7" for _n, labels, _v in samples)
    # A copy that could not be read still gets its series (a push replaces the metric's series), ending at 0.
    unreadable = recovery_window_samples("7", [primary], ["dr"])
    assert (RECOVERY_WINDOW_LATEST, {"system_id": "7", "copy": "dr"}, 0.0) in unreadable
