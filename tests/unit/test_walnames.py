"""WAL names, LSNs and the segments a restore needs across timeline switches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqox_platform.backup.walnames import (
    Segment,
    WalNameError,
    check_wal_name,
    find_gaps,
    format_lsn,
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


def test_find_gaps_names_the_missing_segment():
    segs = required_segments(1, 0, 1, 3 * MiB16, {})
    archived = {s.name for s in segs} - {segment_name(1, 2)}
    assert find_gaps(segs, archived) == [segment_name(1, 2)]
