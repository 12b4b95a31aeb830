"""RTO per phase of the benchmark's restore, and its projection to a large database with a day of WAL.

The projection is linear in the measured throughputs: each file phase (download, decrypt, extract, verify, or
whatever phases ``cqox-platform restore`` reports) scales with the database size, replay with the WAL volume.
It assumes the same machine and S3, so it is an estimate of where the time goes, not a promise.
"""

from __future__ import annotations

from dataclasses import dataclass

ROADMAP_RTO_HOURS = 4.0


@dataclass(frozen=True)
class MeasuredRestore:
    """One tool's restore + replay: seconds per file phase, replay seconds, and the volumes they covered."""

    tool: str
    file_phases: dict[str, float]
    replay_seconds: float
    database_bytes: int
    wal_bytes: int
    #: Seconds that do not grow with the data (the command starting, its checks), kept as measured.
    fixed_seconds: float = 0.0

    def measured(self) -> dict[str, float]:
        fixed = {"start + checks": self.fixed_seconds} if self.fixed_seconds else {}
        return {**fixed, **self.file_phases, "replay": self.replay_seconds}

    def projected(self, database_bytes: int, wal_bytes: int) -> dict[str, float]:
        scale = database_bytes / self.database_bytes
        phases = {"start + checks": self.fixed_seconds} if self.fixed_seconds else {}
        phases.update({name: secs * scale for name, secs in self.file_phases.items()})
        phases["replay"] = self.replay_seconds * wal_bytes / max(self.wal_bytes, 1)
        return phases


def _hms(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 2**20 / seconds:.0f} MiB/s" if seconds > 0 else "-"


def markdown(measured: list[MeasuredRestore], target_db_bytes: int, target_wal_bytes: int) -> str:
    """The RTO table of docs/benchmarks.md: per tool and phase, measured time and throughput, projected time;
    totals vs 4 h."""
    db_gib, wal_gib = target_db_bytes / 2**30, target_wal_bytes / 2**30
    lines = [
        f"| tool | phase | measured | throughput | projected ({db_gib / 1024:g} TiB + {wal_gib:g} GiB WAL) |",
        "|---|---|---|---|---|",
    ]
    for m in measured:
        projected = m.projected(target_db_bytes, target_wal_bytes)
        for phase, secs in m.measured().items():
            volume = {"replay": m.wal_bytes, "start + checks": 0}.get(phase, m.database_bytes)
            rate = _rate(volume, secs) if volume else "fixed"
            lines.append(f"| {m.tool} | {phase} | {secs:.1f} s | {rate} | {_hms(projected[phase])} |")
        total = sum(projected.values())
        verdict = "met" if total <= ROADMAP_RTO_HOURS * 3600 else "MISSED"
        measured_total = sum(m.measured().values())
        lines.append(
            f"| {m.tool} | **RTO** ({m.database_bytes / 2**30:.1f} GiB + {m.wal_bytes / 2**30:.1f} GiB WAL) | "
            f"**{measured_total:.1f} s** | | **{_hms(total)}** vs {ROADMAP_RTO_HOURS:g} h: {verdict} |"
        )
    return "\n".join(lines)
