"""The backup benchmark's verdicts: the parts of ``benchmarks/backup_vs_pgbackrest`` that decide met or missed.

The benchmark itself needs a stack and minutes; these are the pure decisions inside it, which would otherwise
only be seen wrong in a 10 GB run: reading the restore's phases from its output, calling a backlog growing,
and projecting an RTO from measured throughputs.
"""

from __future__ import annotations

from benchmarks._rto import MeasuredRestore, markdown
from benchmarks.backup_vs_pgbackrest import Sample, backlog_bounded, backlog_slope, restored_file_phases

GIB = 2**30


def test_restore_phases_are_read_from_the_cli_line_with_when_it_was_printed():
    lines = [(0.5, "download: 10 of 20 MiB"), (4.0, "restored files: download 1.5 s, extract 2.0 s, verify 0.3 s")]
    phases, at = restored_file_phases(lines, total=9.0)
    assert phases == {"download": 1.5, "extract": 2.0, "verify": 0.3}
    assert at == 4.0


def test_restore_without_the_phase_line_counts_as_one_unsplit_phase():
    phases, at = restored_file_phases([(1.0, "something else")], total=9.0)
    assert phases == {"restore (unsplit)": 9.0}
    assert at == 9.0


def _samples(ready: list[int], every: float = 5.0) -> list[Sample]:
    return [Sample(t=i * every, lsn=0, archived=0, failed=0, ready=r) for i, r in enumerate(ready)]


def test_a_backlog_that_climbs_past_the_noise_floor_is_growing():
    climbing = _samples([0, 2, 4, 6, 8, 10, 12, 14, 16, 18])
    assert backlog_slope(climbing) > 1.0
    assert not backlog_bounded(climbing)


def test_a_few_segments_in_flight_are_not_a_growing_backlog():
    # The small run's pattern: 0 most of the time, 2 at the end while a segment is being pushed.
    assert backlog_bounded(_samples([0, 0, 0, 1, 0, 0, 0, 0, 2, 2]))
    # A large but steady backlog is bounded too.
    assert backlog_bounded(_samples([20, 21, 20, 19, 20, 21, 20, 20, 21, 20]))


def test_rto_projection_scales_file_phases_with_size_and_replay_with_wal():
    measured = MeasuredRestore("tool", {"download": 10.0, "extract": 20.0}, 40.0, 10 * GIB, 2 * GIB)
    projected = measured.projected(1024 * GIB, 50 * GIB)
    assert projected == {"download": 1024.0, "extract": 2048.0, "replay": 1000.0}
    table = markdown([measured], 1024 * GIB, 50 * GIB)
    assert "| tool | **RTO** (10.0 GiB + 2.0 GiB WAL) | **70.0 s** | | **1:07:52** vs 4 h: met |" in table


def test_rto_projection_over_four_hours_is_missed():
    # 150 s for 10 GiB is 4.3 h for 1 TiB before any replay.
    slow = MeasuredRestore("slow", {"restore files": 150.0}, 10.0, 10 * GIB, 2 * GIB)
    assert "vs 4 h: MISSED" in markdown([slow], 1024 * GIB, 50 * GIB)


def test_rto_projection_keeps_fixed_costs_as_measured():
    measured = MeasuredRestore("tool", {"download": 10.0}, 40.0, 10 * GIB, 2 * GIB, fixed_seconds=3.0)
    assert measured.projected(1024 * GIB, 50 * GIB) == {"start + checks": 3.0, "download": 1024.0, "replay": 1000.0}
    assert "| tool | start + checks | 3.0 s | fixed | 0:00:03 |" in markdown([measured], 1024 * GIB, 50 * GIB)
