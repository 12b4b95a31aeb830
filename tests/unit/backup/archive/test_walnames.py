"""WAL names, LSNs and the segments a restore needs across timeline switches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqox_platform.backup.archive.wal_names import (
    Segment,
    WalNameError,
    check_wal_name,
    find_gaps,
    format_lsn,
    newest_on_path,
    parse_history,
    parse_lsn,
    required_segments,
    segment_name,
)

MiB16 = 16 * 1024 * 1024


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lsn_round_trips(lsn):
    assert parse_lsn(format_lsn(lsn)) == lsn


@given(st.integers(min_value=1, max_value=2**32 - 1), st.integers(min_value=0, max_value=2**40 - 1))
def test_segment_names_round_trip(timeline, segno):
    assert Segment.parse(segment_name(timeline, segno)) == Segment(timeline, segno)


def test_segment_name_matches_postgresql():
    # pg_walfile_name('16/B374D848') on timeline 1 is 0000000100000016000000B3
    lsn = parse_lsn("16/B374D848")
    assert segment_name(1, lsn // MiB16) == "0000000100000016000000B3"


@pytest.mark.parametrize(
    "name",
    [
        "000000010000000000000001",
        "00000002.history",
        "000000010000000000000001.00000028.backup",
        "000000010000000000000001.partial",
    ],
)
def test_archivable_names(name):
    assert check_wal_name(name) == name


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "00000001000000000000000g", "x", "", "/abs/000000010000000000000001"]
)
def test_everything_else_is_refused(name):
    with pytest.raises(WalNameError):
        check_wal_name(name)


def test_required_segments_on_one_timeline():
    segs = required_segments(1, 3 * MiB16 + 40, 1, 5 * MiB16 + 10, {})
    assert [s.name for s in segs] == [segment_name(1, n) for n in (3, 4, 5)]


def test_required_segments_follow_a_timeline_switch_mid_segment():
    # Timeline 2 branched from 1 inside segment 5: segments 3-4 come from TL1, 5 onwards from TL2.
    histories = {2: parse_history("1\t0/5000100\tno recovery target specified\n")}
    segs = required_segments(1, 3 * MiB16, 2, 7 * MiB16, histories)
    assert [(s.timeline, s.segno) for s in segs] == [(1, 3), (1, 4), (2, 5), (2, 6), (2, 7)]


def test_required_segments_across_two_switches():
    histories = {
        3: parse_history("1\t0/4000000\treason\n2\t0/6800000\treason\n"),
        2: parse_history("1\t0/4000000\treason\n"),
    }
    segs = required_segments(1, 2 * MiB16, 3, 7 * MiB16, histories)
    assert [(s.timeline, s.segno) for s in segs] == [(1, 2), (1, 3), (2, 4), (2, 5), (3, 6), (3, 7)]


def test_missing_history_or_foreign_timeline_is_an_error():
    with pytest.raises(WalNameError, match="history"):
        required_segments(1, 0, 2, MiB16, {})
    with pytest.raises(WalNameError, match="ancestor"):
        required_segments(3, 0, 2, MiB16, {2: parse_history("1\t0/100\tx\n")})
    with pytest.raises(WalNameError, match="line 1"):
        parse_history("garbage\n", where="00000002.history")


def test_newest_on_path_ignores_an_old_timeline_archived_past_the_switch():
    # Primary on TL2 (branched at 0/30000060), archive holding TL1 up to ...4F: only TL1 below the switch
    # segment is on TL2's path, so the newest protected segment is TL1's 0x2F, not 0x4F.
    ancestry = parse_history("1\t0/30000060\tno recovery target specified\n")
    archived = [segment_name(1, n) for n in range(1, 0x50)] + ["00000002.history"]
    assert newest_on_path(archived, 2, ancestry) == Segment(1, 0x2F)
    # Once the new timeline archives, its own segments (the switch segment's copy included) are the newest.
    archived += [segment_name(2, 0x30), segment_name(2, 0x31)]
    assert newest_on_path(archived, 2, ancestry) == Segment(2, 0x31)


def test_newest_on_path_of_timeline_1_ignores_a_promoted_copys_timeline():
    archived = [segment_name(1, n) for n in range(1, 6)] + [segment_name(2, n) for n in range(3, 9)]
    assert newest_on_path(archived, 1, []) == Segment(1, 5)
    assert newest_on_path(["00000001.history"], 1, []) is None


def test_find_gaps_names_the_missing_segment():
    segs = required_segments(1, 0, 1, 3 * MiB16, {})
    archived = {s.name for s in segs} - {segment_name(1, 2)}
    assert find_gaps(segs, archived) == [segment_name(1, 2)]


@pytest.mark.parametrize("switch", ["0/5000100", "0/5000000", "0/5FFFFF8"])
def test_old_timeline_before_the_switch_segment_plus_new_timeline_from_it_is_continuous(switch):
    # What an HA catch-up leaves in the archive: TL1 below the switch segment (pushed by the old leader or
    # by the catch-up after 00000002.history), TL2 from the switch segment on (the new leader's own).
    from cqox_platform.backup.wal.catchup import segments_to_catch_up

    history = f"1\t{switch}\tno recovery target specified\n"
    switch_segno = parse_lsn(switch) // MiB16
    pg_wal = [segment_name(1, n) for n in range(0, 8)] + [segment_name(2, n) for n in range(switch_segno, 8)]
    caught_up = segments_to_catch_up(pg_wal, "00000002.history", history)
    assert caught_up == [segment_name(1, n) for n in range(switch_segno)]
    archived = {*caught_up, *(segment_name(2, n) for n in range(switch_segno, 8))}
    required = required_segments(1, 0, 2, 8 * MiB16 - 1, {2: parse_history(history)})
    assert find_gaps(required, archived) == []
    assert {s.name for s in required} == archived  # and nothing pushed that a restore would not read
    # Without the catch-up, the segment just before the switch is the gap a failover leaves.
    assert segment_name(1, switch_segno - 1) in find_gaps(required, archived - {segment_name(1, switch_segno - 1)})


@given(
    st.integers(min_value=MiB16, max_value=40 * MiB16),
    st.integers(min_value=0, max_value=30 * MiB16),
    st.integers(min_value=0, max_value=50),
)
def test_catch_up_selects_exactly_the_ancestor_segments_a_restore_reads(first_switch, gap, extra):
    from cqox_platform.backup.wal.catchup import segments_to_catch_up

    second_switch = first_switch + gap
    history = f"1\t{format_lsn(first_switch)}\tx\n2\t{format_lsn(second_switch)}\tx\n"
    last = second_switch // MiB16 + extra
    pg_wal = [segment_name(tli, n) for tli in (1, 2, 3) for n in range(last + 1)]
    required = required_segments(1, 0, 3, last * MiB16, {3: parse_history(history)})
    ancestors_read = [s.name for s in required if s.timeline != 3]
    assert segments_to_catch_up(pg_wal, "00000003.history", history) == ancestors_read
