"""Which old-timeline segments a newly promoted leader pushes after its history file, and how failures surface."""

from __future__ import annotations

from pathlib import Path

import pytest

from cqox_platform.backup.archive.wal_names import WAL_SEGMENT_SIZE, WalNameError, segment_name
from cqox_platform.backup.wal import catchup as wal_catchup
from cqox_platform.backup.wal.catchup import CatchUpError, catch_up_ancestors, segments_to_catch_up
from cqox_platform.backup.wal.segment import PushResult

# Timeline 2 branched from 1 inside segment 5.
HISTORY_2 = "1\t0/5000100\tno recovery target specified\n"
# Timeline 3: 1 -> 2 inside segment 4, 2 -> 3 inside segment 6 (PostgreSQL copies the parent's lines).
HISTORY_3 = "1\t0/4000028\tno recovery target specified\n\n2\t0/6800000\tno recovery target specified\n"


def seg(timeline: int, segno: int) -> str:
    return segment_name(timeline, segno)


def test_parent_segments_below_the_switch_segment_are_selected_in_order():
    names = [seg(1, n) for n in (4, 2, 3)]
    assert segments_to_catch_up(names, "00000002.history", HISTORY_2) == [seg(1, 2), seg(1, 3), seg(1, 4)]


def test_the_switch_segment_and_anything_after_it_on_the_parent_is_not_selected():
    # TL1 segment 5 holds the switch point (recovery reads TL2's copy); 6 is diverged WAL of the old leader.
    names = [seg(1, 4), seg(1, 5), seg(1, 6)]
    assert segments_to_catch_up(names, "00000002.history", HISTORY_2) == [seg(1, 4)]


def test_a_switch_exactly_on_a_segment_boundary_keeps_the_whole_previous_segment():
    names = [seg(1, 4), seg(1, 5)]
    assert segments_to_catch_up(names, "00000002.history", "1\t0/5000000\treason\n") == [seg(1, 4)]


def test_new_timeline_segments_are_not_selected():
    # The new leader archives its own timeline through PostgreSQL's .ready files.
    names = [seg(1, 4), seg(2, 5), seg(2, 6), seg(2, 3)]
    assert segments_to_catch_up(names, "00000002.history", HISTORY_2) == [seg(1, 4)]


def test_partial_backup_history_temporary_and_other_files_are_ignored():
    names = [
        seg(1, 4),
        f"{seg(1, 3)}.partial",
        f"{seg(1, 3)}.00000028.backup",
        "00000002.history",
        "00000001.history",
        "xlogtemp.12345",
        "RECOVERYXLOG",
        "archive_status",
        f".{seg(1, 2)}.tmp",
    ]
    assert segments_to_catch_up(names, "00000002.history", HISTORY_2) == [seg(1, 4)]


def test_already_archived_segments_are_skipped():
    names = [seg(1, n) for n in (2, 3, 4)]
    assert segments_to_catch_up(names, "00000002.history", HISTORY_2, {seg(1, 3)}) == [seg(1, 2), seg(1, 4)]


def test_grandparent_segments_follow_the_whole_history():
    names = [seg(1, n) for n in range(2, 8)] + [seg(2, n) for n in range(2, 8)] + [seg(3, n) for n in (6, 7)]
    # TL1 up to segment 3 (4 holds the 1 -> 2 switch), TL2 for 4 and 5 (6 holds the 2 -> 3 switch).
    assert segments_to_catch_up(names, "00000003.history", HISTORY_3) == [seg(1, 2), seg(1, 3), seg(2, 4), seg(2, 5)]


def test_a_timeline_not_in_the_history_is_never_selected():
    # A sibling timeline (say 2, when 3 branched from 1) is another history, not this one's past.
    names = [seg(1, 3), seg(2, 3)]
    assert segments_to_catch_up(names, "00000003.history", "1\t0/5000100\treason\n") == [seg(1, 3)]


def test_a_bad_history_is_refused():
    with pytest.raises(WalNameError, match="line 1"):
        segments_to_catch_up([seg(1, 1)], "00000002.history", "garbage\n")
    with pytest.raises(WalNameError, match="history file name"):
        segments_to_catch_up([seg(1, 1)], "000000010000000000000001", HISTORY_2)


# --- the I/O around it, with a stand-in archive --------------------------------------------------------------


class FakeArchive:
    def __init__(self, archived: set[str]) -> None:
        self.archived = archived

    def wal_manifest_key(self, name: str) -> str:
        return name

    def head(self, key: str):
        return {} if key in self.archived else None


def _pg_wal(tmp_path: Path, names: list[str]) -> Path:
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    (pg_wal / "00000002.history").write_text(HISTORY_2)
    for name in names:
        (pg_wal / name).write_bytes(b"\0" * WAL_SEGMENT_SIZE)
    return pg_wal


def test_catch_up_pushes_what_is_missing_and_logs_each_file_and_a_summary(tmp_path, monkeypatch):
    pg_wal = _pg_wal(tmp_path, [seg(1, 2), seg(1, 3), seg(1, 4), seg(1, 5), seg(2, 5)])
    pushed: list[str] = []

    def push(archive, provider, path):
        pushed.append(path.name)
        return PushResult(path.name, True, WAL_SEGMENT_SIZE, 1000, 0.01)

    monkeypatch.setattr(wal_catchup, "push_wal", push)
    lines: list[str] = []
    result = catch_up_ancestors(FakeArchive({seg(1, 3)}), None, pg_wal / "00000002.history", lines.append)
    assert pushed == [seg(1, 2), seg(1, 4)]
    assert result.already_archived == [seg(1, 3)]
    assert [line.split()[2] for line in lines[:-1]] == pushed
    assert "2 unarchived segment(s) of timeline(s) 1" in lines[-1] and "0/5000100" in lines[-1]


def test_a_failed_segment_fails_the_catch_up_after_trying_the_others(tmp_path, monkeypatch):
    pg_wal = _pg_wal(tmp_path, [seg(1, 2), seg(1, 3), seg(1, 4)])
    pushed: list[str] = []

    def push(archive, provider, path):
        if path.name == seg(1, 3):
            raise wal_catchup.CqoxError("S3 is down")
        pushed.append(path.name)
        return PushResult(path.name, True, WAL_SEGMENT_SIZE, 1000, 0.01)

    monkeypatch.setattr(wal_catchup, "push_wal", push)
    lines: list[str] = []
    with pytest.raises(CatchUpError, match=f"{seg(1, 3)}: S3 is down"):
        catch_up_ancestors(FakeArchive(set()), None, pg_wal / "00000002.history", lines.append)
    assert pushed == [seg(1, 2), seg(1, 4)]
    assert any("NOT archived" in line for line in lines)


def test_a_segment_postgresql_removed_meanwhile_is_a_logged_gap_not_a_retry_loop(tmp_path, monkeypatch):
    pg_wal = _pg_wal(tmp_path, [seg(1, 3), seg(1, 4)])

    def push(archive, provider, path):
        if path.name == seg(1, 3):
            path.unlink()  # the checkpointer recycled it between the listing and the read
            raise wal_catchup.CqoxError(f"cannot read WAL file {path}")
        return PushResult(path.name, True, WAL_SEGMENT_SIZE, 1000, 0.01)

    monkeypatch.setattr(wal_catchup, "push_wal", push)
    lines: list[str] = []
    result = catch_up_ancestors(FakeArchive(set()), None, pg_wal / "00000002.history", lines.append)
    assert result.skipped == [seg(1, 3)] and [r.name for r in result.pushed] == [seg(1, 4)]
    assert "a gap remains" in lines[0] and "1 NOT archivable" in lines[-1]


def test_the_async_pusher_catches_up_after_a_history_file_and_reports_a_failure(tmp_path, monkeypatch):
    from cqox_platform.backup.wal import catchup as catchup_module
    from cqox_platform.backup.wal import pusher as wal_async
    from cqox_platform.backup.wal.push_client import marker_matches

    calls: list[str] = []
    monkeypatch.setattr(
        wal_async, "push_wal_content", lambda a, p, name, raw, digest: PushResult(name, True, len(raw), 1, 0.0)
    )

    def catch_up(archive, provider, history_path, log):
        calls.append(history_path.name)
        raise CatchUpError(f"{seg(1, 4)}: S3 is down")

    monkeypatch.setattr(catchup_module, "catch_up_ancestors", catch_up)  # behind the pusher's history-file rule
    pgdata, spool = tmp_path / "pgdata", tmp_path / "spool"
    (pgdata / "pg_wal").mkdir(parents=True)
    segment, history = "000000020000000000000005", "00000002.history"
    (pgdata / "pg_wal" / segment).write_bytes(b"\0" * 64)
    (pgdata / "pg_wal" / history).write_text("1\t0/5000000\tno recovery target specified\n")

    assert wal_async.push_and_mark(None, None, spool, pgdata, segment, lambda m: None).uploaded
    with pytest.raises(CatchUpError, match="S3 is down"):
        wal_async.push_and_mark(None, None, spool, pgdata, history, lambda m: None)
    assert calls == [history]
    # The segment is reported archived; the history file is not (its push is retried until the catch-up works).
    assert marker_matches(spool, pgdata / "pg_wal" / segment)
    assert not marker_matches(spool, pgdata / "pg_wal" / history)
