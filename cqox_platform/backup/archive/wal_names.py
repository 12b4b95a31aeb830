"""WAL file names, LSN arithmetic and timeline histories: the pure part of archive continuity.

PostgreSQL names a segment ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, then the segment number split into a
"log" and a "seg" part, 0x100 segments of 16 MiB per log). The archive also holds ``TTTTTTTT.history`` files
(where each timeline branched off its parent) and ``<segment>.XXXXXXXX.backup`` backup history files.
Continuity is checked by walking the segments a restore would need from a backup's start LSN to a later LSN,
switching timelines exactly where the history files say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cqox_platform.errors import BackupError

WAL_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENTS_PER_LOG = 0x1_0000_0000 // WAL_SEGMENT_SIZE

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
PARTIAL_RE = re.compile(r"^[0-9A-F]{24}\.partial$")
HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")
BACKUP_HISTORY_RE = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")


class WalNameError(BackupError):
    """Not a name PostgreSQL would archive."""


def is_archivable_name(name: str) -> bool:
    return any(p.match(name) for p in (SEGMENT_RE, PARTIAL_RE, HISTORY_RE, BACKUP_HISTORY_RE))


def check_wal_name(name: str) -> str:
    """The file name of a WAL file, refusing anything else (paths, dots, lowercase, garbage)."""
    if not is_archivable_name(name):
        raise WalNameError(f"{name!r} is not a WAL segment, history or backup-history file name.")
    return name


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> integer byte position."""
    try:
        high, low = text.split("/")
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise WalNameError(f"{text!r} is not an LSN (expected X/Y in hex).") from None


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_number(lsn: int) -> int:
    return lsn // WAL_SEGMENT_SIZE


def segment_name(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno // SEGMENTS_PER_LOG:08X}{segno % SEGMENTS_PER_LOG:08X}"


@dataclass(frozen=True, order=True)
class Segment:
    timeline: int
    segno: int

    @property
    def name(self) -> str:
        return segment_name(self.timeline, self.segno)

    @property
    def start_lsn(self) -> int:
        return self.segno * WAL_SEGMENT_SIZE

    @property
    def end_lsn(self) -> int:
        return (self.segno + 1) * WAL_SEGMENT_SIZE

    @classmethod
    def parse(cls, name: str) -> Segment:
        if not SEGMENT_RE.match(name):
            raise WalNameError(f"{name!r} is not a WAL segment name.")
        return cls(int(name[:8], 16), int(name[8:16], 16) * SEGMENTS_PER_LOG + int(name[16:], 16))


@dataclass(frozen=True)
class TimelineSwitch:
    """One line of a ``.history`` file: ``parent`` ended (and the child began) at ``switch_lsn``."""

    parent: int
    switch_lsn: int


def parse_history(text: str, *, where: str = "history file") -> list[TimelineSwitch]:
    """Parse a timeline history file (``parentTLI <tab> switchpoint <tab> reason`` per line)."""
    switches = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        try:
            switches.append(TimelineSwitch(int(parts[0]), parse_lsn(parts[1])))
        except (ValueError, IndexError, WalNameError):
            raise WalNameError(f"{where} line {number} is not 'timeline<TAB>lsn<TAB>reason': {line!r}") from None
    return switches


def timeline_ranges(end_timeline: int, ancestry: list[TimelineSwitch]) -> list[tuple[int, int, int]]:
    """``(timeline, from_lsn, to_lsn)`` along the path to ``end_timeline``, oldest first, ``to_lsn`` exclusive.

    ``ancestry`` is ``end_timeline``'s parsed history file: each ancestor runs up to its switch point, then
    ``end_timeline`` runs on without end.
    """
    ranges: list[tuple[int, int, int]] = []
    previous_end = 0
    for switch in ancestry:
        ranges.append((switch.parent, previous_end, switch.switch_lsn))
        previous_end = switch.switch_lsn
    ranges.append((end_timeline, previous_end, 1 << 64))
    return ranges


def segment_timeline(segno: int, ranges: list[tuple[int, int, int]]) -> int:
    """The timeline recovery reads segment ``segno`` from, given ``timeline_ranges``.

    The newest timeline whose range overlaps the segment: the segment holding a switch point exists on both
    timelines and the child's copy is the one recovery reads.
    """
    seg_start = segno * WAL_SEGMENT_SIZE
    seg_end = seg_start + WAL_SEGMENT_SIZE
    return next(tli for tli, lo, hi in reversed(ranges) if lo < seg_end and seg_start < hi)


def newest_on_path(archived: Iterable[str], timeline: int, ancestry: list[TimelineSwitch]) -> Segment | None:
    """The newest archived segment on the path recovery takes to ``timeline``, or None.

    ``ancestry`` is ``timeline``'s parsed history file. Only a segment recovery would read counts: an ancestor's
    below its switch segment, ``timeline``'s own from the switch segment on. An old timeline archived past
    the switch (a promoted restore, or an old leader that went on archiving) and another branch's segments
    protect nothing written on ``timeline``, however high their numbers.
    """
    ranges = timeline_ranges(timeline, ancestry)
    newest: Segment | None = None
    for name in archived:
        if not SEGMENT_RE.match(name):
            continue
        segment = Segment.parse(name)
        if segment_timeline(segment.segno, ranges) == segment.timeline and (
            newest is None or segment.segno > newest.segno
        ):
            newest = segment
    return newest


def required_segments(
    start_timeline: int,
    start_lsn: int,
    end_timeline: int,
    end_lsn: int,
    histories: dict[int, list[TimelineSwitch]],
) -> list[Segment]:
    """Every segment a restore from ``start`` to ``end`` replays, in order, following timeline switches.

    ``histories[t]`` is the parsed ``t.history`` file (its lines are the ancestors of ``t``). The timeline
    branch points of ``end_timeline`` decide which timeline each LSN range is read from (``segment_timeline``).
    """
    if end_lsn < start_lsn:
        raise WalNameError(f"end {format_lsn(end_lsn)} is before start {format_lsn(start_lsn)}.")
    ancestry = histories.get(end_timeline, []) if end_timeline != 1 else []
    if end_timeline != 1 and not ancestry:
        raise WalNameError(f"timeline {end_timeline} has no history file in the archive ({end_timeline:08X}.history).")
    ranges = timeline_ranges(end_timeline, ancestry)
    if start_timeline not in {tli for tli, _, _ in ranges}:
        raise WalNameError(f"timeline {start_timeline} (the backup's) is not an ancestor of timeline {end_timeline}.")
    return [
        Segment(segment_timeline(segno, ranges), segno)
        for segno in range(segment_number(start_lsn), segment_number(end_lsn) + 1)
    ]


def find_gaps(required: list[Segment], archived: set[str]) -> list[str]:
    """Names of required segments that are not in the archive."""
    return [s.name for s in required if s.name not in archived]
