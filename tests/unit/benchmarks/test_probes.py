"""The backup benchmark's disk and memory probes: what they count as a spool's scratch space and as a peak."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from benchmarks._probes import DiskWatch, ProcessWatch, du_bytes
from benchmarks.backup_vs_pgbackrest import Bench

MIB = 2**20


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def test_a_spool_marker_hard_linked_to_a_live_segment_costs_nothing_until_the_segment_is_removed(tmp_path):
    segment = _file(tmp_path / "pg_wal" / "000000010000000000000001", MIB)
    spool = tmp_path / "spool"
    (spool / "ok").mkdir(parents=True)
    os.link(segment, spool / "ok" / segment.name)
    _file(spool / "ok" / "own-file", MIB)
    assert du_bytes(spool) >= 2 * MIB  # every name counted
    assert MIB <= du_bytes(spool, own_only=True) < 2 * MIB
    segment.unlink()  # the server removed its name: the marker now holds the segment's blocks alone
    assert du_bytes(spool, own_only=True) >= 2 * MIB


def test_disk_watch_reports_growth_over_what_the_directory_held_at_the_start(tmp_path):
    _file(tmp_path / "before", MIB)
    with DiskWatch(tmp_path, interval=0.05) as watch:
        _file(tmp_path / "during", 2 * MIB)
    assert watch.start_du >= MIB
    assert 2 * MIB <= watch.peak_growth < 3 * MIB


def test_disk_watch_of_a_directory_that_does_not_exist_yet_starts_at_zero(tmp_path):
    with DiskWatch(tmp_path / "spool" / "not-yet", interval=0.05) as watch:
        _file(tmp_path / "spool" / "not-yet" / "segment", MIB)
    assert watch.start_du == 0
    assert watch.peak_growth >= MIB


def test_rss_peaks_keep_each_tools_largest_over_the_repeats():
    bench = SimpleNamespace(rss={})

    def watch(single: int, total: int) -> ProcessWatch:
        return ProcessWatch(peak_single=single, peak_total=total)

    Bench.keep_rss(bench, "restore", watch(172, 160), None)
    Bench.keep_rss(bench, "restore", None, watch(24, 69))
    Bench.keep_rss(bench, "restore", watch(150, 186), None)
    Bench.keep_rss(bench, "restore", None, watch(25, 60))
    assert bench.rss["restore"] == ((172, 186), (25, 69))
