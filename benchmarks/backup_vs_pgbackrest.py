"""Backups at production scale against pgBackRest, on one pgbench database, side by side in one run (issue 15).

Both sides compress with zstd and encrypt, and both store in the stack's S3 server over verified TLS.
pgBackRest 2.45 (Debian) is configured for speed on this machine (``benchmarks/_pgbackrest.py``): zstd,
``process-max`` 2, ``archive-async`` with deep push and get queues and a spool. The platform is driven only
through its stable entry points, so changes to the backup code plug in without editing this file:

| `--figures` | what | cqox-platform | pgBackRest | target |
|---|---|---|---|---|
| `backup` | full backup | `create_base_backup` (own prefix) | `backup` | <= 1.0x |
| `restore` | restore of files | `restore --no-start` (CLI) | `restore` | <= 1.0x, disk <= 1.1x db |
| `replay` | replay phase; restore + replay | `restore` (CLI), wal-fetch | async archive-get | <= 1.0x; <= 0.8x |
| `archive-cost` | archive_command per segment | the server's archive_command | async push | <= 1.0x |
| `sustained` | archiving, pgbench flat out | the server's archive_command | - | bounded, >= 1.5x |
| `rss` | peak RSS and scratch disk: backup, push, fetch, restore | /proc, du, during the above | same | stated |

Peak RSS counts a tool's own processes (the platform's backup runs in a process of its own for it,
``benchmarks._backup_child``); a restored server's memory is its own row (summed PSS of its ``postgres``
processes, shared buffers once). Scratch disk is the peak du, sampled while the operation runs, of the local
directory it writes besides the data it produces: the base backup's work directory (the platform's
``pg_basebackup`` output, read as it grows) and pgBackRest's spool; the whole restore directory (data directory
and side files), after the files alone and again through replay to promoted (what a drill's scratch directory
holds); the push spools (files only the spool links, so a marker hard-linked to a live WAL segment costs
nothing); the fetch spools (the platform's prefetch spool, pgBackRest's archive-get queue).

Peak disk is sampled (du of the restore's directory, and growth of its file system) while the files are
restored, over the size of the restored data directory. Sustained archiving samples ``pg_stat_archiver`` and
the ``.ready`` files; then it pauses archiving (empty ``archive_command``) for ``--headroom-seconds`` under the
same load and times the drain: the archiver's capacity under load over pgbench's WAL write rate.
The replay figure also prints the RTO per phase and its projection to ``--project-tb`` with a day of WAL
(``--wal-per-day-gb``), as a markdown table for docs/benchmarks.md, against the roadmap's 4 h.

Each time is the median of ``--repeat`` runs; the ratio is cqox-platform's over pgBackRest's.

    eval "$(cqox-platform stack env)"   # after `stack up`
    python -m benchmarks.backup_vs_pgbackrest --scale 68                  # ~1 GB
    python -m benchmarks.backup_vs_pgbackrest --scale 680 --repeat 1      # ~10 GB
    python -m benchmarks.backup_vs_pgbackrest --scale 10 --figures archive-cost,rss
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psycopg

from benchmarks import _archiving as wal
from benchmarks._pgbackrest import PgBackRest, configure, stack_vault
from benchmarks._probes import DiskWatch, ProcessWatch, ServerWatch, du_bytes
from benchmarks._rto import MeasuredRestore, markdown
from benchmarks._scratch import scratch_database
from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import parse_lsn
from cqox_platform.backup.base.create import create_base_backup
from cqox_platform.backup.restore.recovery import RecoveryTarget, configure_recovery
from cqox_platform.installation import platform_cli
from cqox_platform.pgserver import ScratchCluster, chown_tree, free_port, pg_bindir
from cqox_platform.stack.s3 import client_config

FIGURES = ("backup", "restore", "replay", "archive-cost", "sustained", "rss")
MIB = 2**20
#: Sustained archiving: a backlog trending up faster than this, and larger than the noise floor, is growing.
GROWING_SEGMENTS_PER_MINUTE = 1.0
BACKLOG_NOISE_SEGMENTS = 8
#: The headroom pause lasts until this many segments wait, so the drain has something to measure.
DRAIN_MIN_SEGMENTS = 4


@dataclass
class Row:
    """One line of the final table; ``ours``/``theirs`` in ``unit``, ``met`` None when only stated."""

    figure: str
    ours: float
    theirs: float | None
    unit: str
    target: str
    met: bool | None


@dataclass
class Bench:
    """What every figure needs: the stack, the scratch database, pgBackRest, and what was measured."""

    args: argparse.Namespace
    work: Path
    s3: object
    bucket: str
    provider: object
    pgdata: Path
    admin: psycopg.Connection
    admin_dsn: str
    dsn: str
    sysid: str
    backrest: PgBackRest
    archive_command: str
    bench_archive: Archive
    rows: list[Row] = field(default_factory=list)
    #: Peak RSS per operation: (largest process, all at once) for cqox-platform and pgBackRest, over the repeats.
    rss: dict[str, tuple[tuple[int, int], tuple[int, int] | None]] = field(default_factory=dict)
    #: Peak scratch bytes per operation (cqox-platform, pgBackRest), the largest over repeats.
    scratch: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    #: Peak PSS of the restored server while it replays, per tool (the same PostgreSQL for both).
    server: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    restores: list[MeasuredRestore] = field(default_factory=list)
    purge: list[tuple[Archive, str]] = field(default_factory=list)
    bench_record: BackupRecord | None = None

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def compare(self, figure: str, ours: list[float], theirs: list[float], unit: str = "s") -> None:
        o, t = statistics.median(ours), statistics.median(theirs)
        self.rows.append(Row(figure, o, t, unit, "<= 1.0x", o <= t))

    def keep_rss(self, kind: str, ours: ProcessWatch | None, theirs: ProcessWatch | None) -> None:
        """Keep each tool's largest peaks (one process, all at once) for ``kind`` over the repeats."""

        def merged(old: tuple[int, int] | None, watch: ProcessWatch | None) -> tuple[int, int] | None:
            if watch is None:
                return old
            new = (watch.peak_single, watch.peak_total)
            return new if old is None else (max(old[0], new[0]), max(old[1], new[1]))

        o, t = self.rss.get(kind, (None, None))
        self.rss[kind] = (merged(o, ours) or (0, 0), merged(t, theirs))

    def keep_peak(self, table: dict[str, tuple[int, int | None]], kind: str, ours: int, theirs: int | None) -> None:
        """Keep the larger of each tool's peaks for ``kind`` over the repeats."""
        o, t = table.get(kind, (0, None))
        table[kind] = (max(o, ours), theirs if t is None else max(t, theirs or 0))

    @property
    def push_spool(self) -> Path:
        """The platform's WAL push spools (one per data directory), beside the archiver's settings."""
        return Path(os.environ["CQOX_WAL_ARCHIVER_CONFIG"]).parent / "spool"

    @property
    def prefetch_spool(self) -> Path:
        """The platform's WAL prefetch spools, beside the archiver's settings the restored server reads."""
        return Path(os.environ["CQOX_WAL_ARCHIVER_CONFIG"]).parent / "prefetch"

    @property
    def backrest_spool(self) -> Path:
        """pgBackRest's ``spool-path`` (async archive-push status, archive-get queue); see ``_pgbackrest``."""
        return self.work / "spool"


# --- running and timing commands ---------------------------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    lines: list[tuple[float, str]]  # (seconds since start, line) of the command's output
    rss: ProcessWatch
    disk: DiskWatch | None


def settle() -> None:
    """Write dirty pages back and drop the page cache (as root), like the fresh host a real restore runs on."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_timed(argv: list[str], *, disk_root: Path | None = None, watch: ProcessWatch | None = None) -> Timed:
    """Run ``argv`` to completion, timing it, with its process tree's RSS (or ``watch``) and disk sampled.

    Each run starts from the same state (``settle``): a run must not pay for the previous one's dirty pages or
    page-cache reclaim (the same 3 GB restore took 8.5 s with 8.8 s of system time right after ``pgbench -i`` and
    a backup, 4.0 s with 3.0 s after it).
    """
    settle()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    rss = watch or ProcessWatch(root_pid=proc.pid)
    if watch is not None and watch.root_pid is None:
        watch.root_pid = proc.pid
    disk = DiskWatch(disk_root) if disk_root else None
    lines: list[tuple[float, str]] = []
    with rss, disk if disk else contextlib.nullcontext():
        for line in proc.stdout or []:
            lines.append((time.perf_counter() - started, line.rstrip()))
        proc.wait()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(text for _t, text in lines[-15:])
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n{tail}")
    return Timed(seconds, lines, rss, disk)


def cqox(*args: str) -> list[str]:
    return [str(platform_cli()), *args]


def fresh_dir(b: Bench, name: str) -> tuple[Path, Path]:
    """``work/name`` (traversable) with an empty ``pgdata`` path inside it (not created)."""
    parent = b.work / name
    shutil.rmtree(parent, ignore_errors=True)
    parent.mkdir(mode=0o755)
    return parent, parent / "pgdata"


def keep_logs(b: Bench, parent: Path, label: str) -> None:
    """Copy the replay's logs (the server's, the prefetcher's) to ``--keep-logs`` before ``parent`` is removed:
    their timestamps say where the replay phase went (start-up and sync, first segment, steady state, promotion)."""
    if b.args.keep_logs is None:
        return
    target = b.args.keep_logs / f"{label}-{time.strftime('%H%M%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for log in [*parent.rglob("server.log"), *parent.rglob("daemon.log")]:
        shutil.copy(log, target / log.name)


def restored_file_phases(lines: list[tuple[float, str]], total: float) -> tuple[dict[str, float], float]:
    """The phases ``cqox-platform restore`` reports ("restored files: download 1.0 s, ...") and when it did.

    If its output no longer has that line, the whole command counts as one unsplit phase (said loudly)."""
    for at, line in lines:
        if line.startswith("restored files:"):
            phases = {}
            for part in line.removeprefix("restored files:").split(","):
                name, secs, _unit = part.strip().rsplit(" ", 2)
                phases[name] = float(secs)
            return phases, at
    print("WARNING: `cqox-platform restore` printed no 'restored files:' line; its phases are not split.")
    return {"restore (unsplit)": total}, total


def current_lsn(b: Bench) -> int:
    return parse_lsn(b.admin.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


# --- figures -----------------------------------------------------------------------------------------------


def backup_once(b: Bench, archive: Archive) -> BackupRecord:
    return create_base_backup(archive, b.provider, dsn=b.admin_dsn, pg_basebackup=str(pg_bindir() / "pg_basebackup"))


def backup_measured(b: Bench, i: int) -> tuple[BackupRecord, float, Timed]:
    """A backup into the benchmark's archive in a process of its own (``_backup_child``): its process tree's RSS
    and its work directory's peak du are sampled; the time is the one ``create_base_backup`` itself took."""
    scratch = b.work / f"backup-scratch-{i}"
    scratch.mkdir(mode=0o755)
    argv = [sys.executable, "-m", "benchmarks._backup_child", "--system-id", b.bench_archive.system_id]
    run = run_timed([*argv, "--workdir-parent", str(scratch)], disk_root=scratch)
    result = json.loads(run.lines[-1][1])
    record = BackupRecord.from_json(json.dumps(result["record"]), where="benchmarks._backup_child")
    shutil.rmtree(scratch)
    return record, result["seconds"], run


def figure_backup(b: Bench) -> None:
    ours, theirs = [], []
    for i in range(b.args.repeat):
        wal.wait_archived(b.admin)
        b.bench_record, seconds, run = backup_measured(b, i)
        ours.append(seconds)
        run_b = run_timed(b.backrest.argv("backup", "--type=full"), disk_root=b.backrest_spool)
        theirs.append(run_b.seconds)
        b.log(
            f"backup {i + 1}/{b.args.repeat}: cqox {ours[-1]:.1f} s, RSS {run.rss.describe()}, work dir peak "
            f"{run.disk.peak_du / MIB:.0f} MiB; pgBackRest {theirs[-1]:.1f} s, RSS {run_b.rss.describe()}, spool "
            f"+{run_b.disk.peak_growth / MIB:.0f} MiB"
        )
        b.keep_rss("backup", run.rss, run_b.rss)
        b.keep_peak(b.scratch, "backup", run.disk.peak_du, run_b.disk.peak_growth)
    r = b.bench_record
    b.log(f"cqox backup: {r.database_bytes / MIB:.0f} MiB -> {r.stored_bytes / MIB:.0f} MiB stored")
    b.compare("full backup", ours, theirs)


def figure_restore(b: Bench) -> None:
    if b.bench_record is None:  # `--figures restore` alone: one backup each to restore from
        b.bench_record = backup_once(b, b.bench_archive)
        b.backrest.run("backup", "--type=full")
    ours, theirs, ours_disk, theirs_disk = [], [], [], []
    for i in range(b.args.repeat):
        parent, pgdata = fresh_dir(b, f"restore-cqox-{i}")
        argv = cqox("restore", "--backup", b.bench_record.backup_id, "--pgdata", str(pgdata), "--no-start")
        run = run_timed(argv, disk_root=parent)
        size = du_bytes(pgdata)
        ours.append(run.seconds)
        ours_disk.append(run.disk.peak_du / size)
        phases, _ = restored_file_phases(run.lines, run.seconds)
        b.log(
            f"restore {i + 1}: cqox {run.seconds:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in phases.items())}), "
            f"data dir {size / MIB:.0f} MiB, peak du {run.disk.peak_du / MIB:.0f} MiB, "
            f"file system +{run.disk.peak_fs_growth / MIB:.0f} MiB, RSS {run.rss.describe()}"
        )
        b.keep_rss("restore", run.rss, None)
        b.keep_peak(b.scratch, "restore", run.disk.peak_du, None)
        shutil.rmtree(parent)
        parent, pgdata = fresh_dir(b, f"restore-backrest-{i}")
        pgdata.mkdir(mode=0o700)
        chown_tree(pgdata)
        run_b = run_timed(b.backrest.argv("restore", f"--pg1-path={pgdata}", "--type=immediate"), disk_root=parent)
        theirs.append(run_b.seconds)
        theirs_disk.append(run_b.disk.peak_du / du_bytes(pgdata))
        b.log(
            f"restore {i + 1}: pgBackRest {run_b.seconds:.1f} s, peak du {run_b.disk.peak_du / MIB:.0f} MiB, "
            f"RSS {run_b.rss.describe()}"
        )
        b.keep_rss("restore", None, run_b.rss)
        b.keep_peak(b.scratch, "restore", 0, run_b.disk.peak_du)
        shutil.rmtree(parent)
    b.compare("restore of files", ours, theirs)
    peak_ours, peak_theirs = max(ours_disk), max(theirs_disk)
    b.rows.append(Row("restore peak disk / db size", peak_ours, peak_theirs, "x", "<= 1.1x db", peak_ours <= 1.1))


def generate_wal(b: Bench, nbytes: int) -> None:
    """pgbench flat out until ``nbytes`` of WAL were written."""
    start = current_lsn(b)
    bench = wal.pgbench(b.dsn, b.args.clients, 24 * 3600)
    try:
        while current_lsn(b) - start < nbytes:
            if bench.poll() is not None:
                raise SystemExit(f"pgbench stopped early: {bench.stdout.read() if bench.stdout else ''}")
            time.sleep(2)
    finally:
        bench.terminate()
        bench.wait()
    b.log(f"generated {(current_lsn(b) - start) / MIB:.0f} MiB of WAL")


def replay_ours(b: Bench, record: BackupRecord, wal_bytes: int) -> float:
    parent, pgdata = fresh_dir(b, "replay-cqox")
    watch = ProcessWatch(marker=str(pgdata), count_tree=False)  # wal-fetch and its helpers, not restore itself
    with DiskWatch(b.prefetch_spool, own_only=True) as spool, ServerWatch(str(pgdata)) as server:
        argv = cqox("restore", "--backup", record.backup_id, "--pgdata", str(pgdata))
        run = run_timed(argv, watch=watch, disk_root=parent)
    wal.stop_cluster(pgdata, pg_bindir())
    b.keep_peak(b.scratch, "fetch", spool.peak_growth, None)
    b.keep_peak(b.scratch, "restore + replay", run.disk.peak_du, None)
    b.keep_peak(b.server, "replay", server.peak_total, None)
    phases, files_done = restored_file_phases(run.lines, run.seconds)
    replay = run.seconds - files_done
    fixed = max(files_done - sum(phases.values()), 0.0)  # the command starting and checking before the download
    b.restores.append(MeasuredRestore("cqox-platform", phases, replay, record.database_bytes, wal_bytes, fixed))
    b.keep_rss("fetch", watch, None)
    b.log(
        f"replay: cqox {run.seconds:.1f} s to promoted (files {files_done:.1f} s), fetch RSS {watch.describe()}, "
        f"prefetch spool +{spool.peak_growth / MIB:.0f} MiB, server PSS {server.peak_total / MIB:.0f} MiB, "
        f"directory peak {run.disk.peak_du / MIB:.0f} MiB"
    )
    keep_logs(b, parent, "cqox")
    shutil.rmtree(parent)
    return run.seconds


def replay_theirs(b: Bench, database_bytes: int, wal_bytes: int) -> float:
    parent, pgdata = fresh_dir(b, "replay-backrest")
    pgdata.mkdir(mode=0o700)
    chown_tree(pgdata)
    bindir = pg_bindir()
    watch = ProcessWatch(marker=str(pgdata))
    spool = DiskWatch(b.backrest_spool, own_only=True)
    server = ServerWatch(str(pgdata))
    directory = DiskWatch(parent)
    started = time.perf_counter()
    with watch, spool, server, directory:
        b.backrest.run("restore", f"--pg1-path={pgdata}", "--type=default")
        files = time.perf_counter() - started
        cluster = ScratchCluster(pgdata, parent / "sock", free_port(), parent / "server.log", bindir)
        configure_recovery(
            pgdata,
            port=cluster.port,
            socket_dir=cluster.socket_dir,
            restore_command=b.backrest.archive_get(pgdata),
            target=RecoveryTarget("end_of_archive"),
        )
        try:
            cluster.start()
            cluster.wait_promoted(24 * 3600, b.log)
        finally:
            cluster.stop()
    total = time.perf_counter() - started
    b.restores.append(MeasuredRestore("pgBackRest", {"restore files": files}, total - files, database_bytes, wal_bytes))
    b.keep_rss("fetch", None, watch)
    b.keep_peak(b.scratch, "fetch", 0, spool.peak_growth)
    b.keep_peak(b.scratch, "restore + replay", 0, directory.peak_du)
    b.keep_peak(b.server, "replay", 0, server.peak_total)
    b.log(
        f"replay: pgBackRest {total:.1f} s to promoted (files {files:.1f} s), RSS {watch.describe()}, "
        f"archive-get queue +{spool.peak_growth / MIB:.0f} MiB, server PSS {server.peak_total / MIB:.0f} MiB, "
        f"directory peak {directory.peak_du / MIB:.0f} MiB"
    )
    keep_logs(b, parent, "pgbackrest")
    shutil.rmtree(parent)
    return total


def figure_replay(b: Bench) -> None:
    """Both tools archive the same WAL (archive_command chained), then each restores and replays to promoted,
    ``--repeat`` times in turn from the same backups (medians; the RTO table keeps each tool's median run)."""
    cluster_archive = Archive(b.s3, b.bucket, b.sysid)
    with wal.archive_command_override(b.admin, f"( {b.archive_command} ) && {b.backrest.archive_push()}"):
        wal.wait_archived(b.admin)
        ours_from = current_lsn(b)
        record = backup_once(b, cluster_archive)
        b.purge.append((cluster_archive, cluster_archive.backup_prefix(record.backup_id)))
        theirs_from = current_lsn(b)
        b.backrest.run("backup", "--type=full")
        generate_wal(b, int(b.args.replay_wal_gb * 2**30))
        wal.wait_archived(b.admin)
        end = current_lsn(b)
    ours: list[MeasuredRestore] = []
    theirs: list[MeasuredRestore] = []
    for i in range(b.args.repeat):
        replay_ours(b, record, end - ours_from)
        ours.append(b.restores.pop())
        replay_theirs(b, record.database_bytes, end - theirs_from)
        theirs.append(b.restores.pop())
        b.log(f"replay {i + 1}/{b.args.repeat} done (load average {os.getloadavg()[0]:.1f})")
    totals = {id(m): sum(m.measured().values()) for m in ours + theirs}
    for runs in (ours, theirs):
        b.restores.append(sorted(runs, key=lambda m: totals[id(m)])[len(runs) // 2])
    gib = (end - ours_from) / 2**30
    replay_o = statistics.median(m.replay_seconds for m in ours)
    replay_t = statistics.median(m.replay_seconds for m in theirs)
    b.rows.append(Row(f"replay phase {gib:.2f} GiB WAL", replay_o, replay_t, "s", "<= 1.0x", replay_o <= replay_t))
    total_o = statistics.median(totals[id(m)] for m in ours)
    total_t = statistics.median(totals[id(m)] for m in theirs)
    b.rows.append(
        Row(f"restore + replay {gib:.2f} GiB WAL", total_o, total_t, "s", "<= 0.8x", total_o <= 0.8 * total_t)
    )


def figure_archive_cost(b: Bench, watch_rss: bool) -> None:
    """Per-call cost of the server's archive_command vs pgBackRest async, on copies of real segments."""
    sources = sorted(p for p in (b.pgdata / "pg_wal").iterdir() if len(p.name) == 24)[: b.args.segments]
    fake_sysid = secrets.token_bytes(8)  # our archive is keyed by system id: a fresh one keeps the copies apart
    b.purge.append((b.bench_archive, f"postgres/{int.from_bytes(fake_sysid, 'little')}/"))
    ours_names = [f"00000001000000FE{n:08X}" for n in range(len(sources))]
    ours_dir = wal.fake_pgdata(b.work, b.pgdata, ours_names, sources, fake_sysid)
    theirs_names = [f"00000001000000FF{n:08X}" for n in range(len(sources))]
    theirs_dir = wal.fake_pgdata(b.work, b.pgdata, theirs_names, sources, None)
    with ProcessWatch(marker=str(ours_dir)) as ours_rss, DiskWatch(b.push_spool, own_only=True) as ours_disk:
        ours = wal.push_all(ours_dir, ours_names, b.archive_command)
    with ProcessWatch(marker=str(theirs_dir)) as theirs_rss, DiskWatch(b.backrest_spool, own_only=True) as theirs_disk:
        theirs = wal.push_all(theirs_dir, theirs_names, b.backrest.archive_push(theirs_dir))
    b.keep_peak(b.scratch, "push", ours_disk.peak_growth, theirs_disk.peak_growth)
    b.log(
        f"archive_command: cqox {' '.join(f'{t:.2f}' for t in ours)} s; pgBackRest async "
        f"{' '.join(f'{t:.2f}' for t in theirs)} s"
    )
    b.log(
        f"cqox pushes at {16 * len(ours) / sum(ours):.0f} MiB/s sequentially, pgBackRest at "
        f"{16 * len(theirs) / sum(theirs):.0f} MiB/s"
    )
    b.log(
        f"push spool: cqox +{ours_disk.peak_growth / MIB:.1f} MiB, pgBackRest +{theirs_disk.peak_growth / MIB:.1f} MiB"
    )
    if watch_rss:
        b.keep_rss("push", ours_rss, theirs_rss)
    b.compare("archive_command per segment", ours, theirs)


@dataclass
class Sample:
    t: float
    lsn: int
    archived: int
    failed: int
    ready: int


def sample(b: Bench, t0: float) -> Sample:
    lsn, archived, failed = b.admin.execute(
        "SELECT pg_current_wal_lsn()::text, archived_count, failed_count FROM pg_stat_archiver"
    ).fetchone()
    return Sample(time.monotonic() - t0, parse_lsn(lsn), archived, failed, wal.ready_count(b.pgdata))


def watch_for(b: Bench, seconds: float, t0: float, label: str) -> list[Sample]:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(b.args.sample_seconds)
        samples.append(sample(b, t0))
        s = samples[-1]
        print(
            f"  {label:<9} t={s.t:6.0f}s  WAL {s.lsn / MIB:9.0f} MiB  .ready {s.ready:4d}  archived "
            f"{s.archived}  failed {s.failed}",
            flush=True,
        )
    return samples


def backlog_slope(samples: list[Sample]) -> float:
    """Backlog trend in segments per minute over the second half (the first fills pipelines and caches)."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2 or len({s.t for s in half}) < 2:
        return 0.0
    return statistics.linear_regression([s.t for s in half], [s.ready for s in half]).slope * 60


def backlog_bounded(samples: list[Sample]) -> bool:
    """Bounded unless the backlog both trends up (> 1 segment a minute) and ends above 8 segments (128 MiB):
    a few segments waiting while one is pushed is the pipeline, not a backlog."""
    return backlog_slope(samples) <= GROWING_SEGMENTS_PER_MINUTE or samples[-1].ready <= BACKLOG_NOISE_SEGMENTS


def drain(b: Bench, t0: float, floor: int, timeout: float) -> list[Sample]:
    """Samples until the backlog is back to ``floor`` segments (or ``timeout``)."""
    samples = [sample(b, t0)]
    while samples[-1].ready > floor and samples[-1].t - samples[0].t < timeout:
        time.sleep(1)
        samples.append(sample(b, t0))
    return samples


def pause_archiving(b: Bench, t0: float) -> list[Sample]:
    """Archiving paused (empty archive_command) for ``--headroom-seconds``, longer (up to 5x) until at least
    ``DRAIN_MIN_SEGMENTS`` wait, so the drain that follows measures the archiver's capacity on real work."""
    headroom = b.args.headroom_seconds
    with wal.archive_command_override(b.admin, ""):
        samples = watch_for(b, headroom, t0, "paused")
        while samples[-1].ready < DRAIN_MIN_SEGMENTS and samples[-1].t - samples[0].t < 5 * headroom:
            samples += watch_for(b, b.args.sample_seconds, t0, "paused")
    return samples


def figure_sustained(b: Bench) -> None:
    minutes = b.args.sustained_minutes
    bench = wal.pgbench(b.dsn, b.args.clients, 24 * 3600)
    t0 = time.monotonic()
    try:
        first = sample(b, t0)
        loaded = [first, *watch_for(b, minutes * 60, t0, "load")]
        paused = pause_archiving(b, t0)
        drained = drain(b, t0, loaded[-1].ready, max(300, 5 * b.args.headroom_seconds))
    finally:
        bench.terminate()
        bench.wait()
    last = loaded[-1]
    write_rate = (last.lsn - first.lsn) / MIB / (last.t - first.t)
    archive_rate = (last.archived - first.archived) * 16 / (last.t - first.t)
    d0, d1 = drained[0], drained[-1]
    measured = d1.archived > d0.archived and d1.t > d0.t
    capacity = (d1.archived - d0.archived) * 16 / (d1.t - d0.t) if measured else 0.0
    drain_write = (d1.lsn - d0.lsn) / MIB / max(d1.t - d0.t, 1e-9)
    slope = backlog_slope(loaded)
    bounded = backlog_bounded(loaded) and last.failed == first.failed
    b.log(
        f"sustained {minutes:g} min: WAL written {write_rate:.1f} MiB/s, archived {archive_rate:.1f} MiB/s, "
        f"backlog peak {max(s.ready for s in loaded)} end {last.ready}, trend {slope:+.2f} segments/min "
        f"({'bounded' if bounded else 'GROWING'}), failures {last.failed - first.failed}"
    )
    b.log(
        f"headroom: paused {paused[-1].t - last.t:.0f} s (backlog {paused[-1].ready}), drained "
        f"{d1.archived - d0.archived} segments in {d1.t - d0.t:.0f} s = {capacity:.1f} MiB/s while pgbench wrote "
        f"{drain_write:.1f} MiB/s{'' if d1.ready <= last.ready else ' (NOT drained)'}"
    )
    b.rows.append(Row("sustained backlog trend", slope, None, "seg/min", "bounded", bounded))
    b.rows.append(
        Row(
            "archive capacity / WAL write",
            capacity / write_rate,
            None,
            "x",
            ">= 1.5x" if measured else "not measured: no drain",
            capacity / write_rate >= 1.5 if measured else None,
        )
    )


def rss_rows(b: Bench) -> None:
    for kind in ("backup", "push", "fetch", "restore"):
        if kind not in b.rss:
            print(f"peak RSS of {kind}: not measured (its figure did not run)")
            continue
        ours, theirs = b.rss[kind]
        for i, how in enumerate(("one process", "all at once")):
            mib = theirs[i] / MIB if theirs else None
            b.rows.append(Row(f"peak RSS {kind}, {how}", ours[i] / MIB, mib, "MiB", "stated", None))
    for kind, (ours, theirs) in b.server.items():
        b.rows.append(
            Row(f"restored server PSS, {kind}", ours / MIB, theirs / MIB if theirs else None, "MiB", "stated", None)
        )
    for kind in ("backup", "push", "fetch", "restore", "restore + replay"):
        if kind in b.scratch:
            ours, theirs = b.scratch[kind]
            b.rows.append(
                Row(
                    f"scratch disk {kind}",
                    ours / MIB,
                    theirs / MIB if theirs is not None else None,
                    "MiB",
                    "stated",
                    None,
                )
            )


# --- report ------------------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    print(f"\n{'figure':<36}{'cqox-platform':>15}{'pgBackRest':>13}{'ratio':>8}  {'target':<20}verdict")
    for r in rows:
        theirs = f"{r.theirs:.2f}" if r.theirs is not None else "-"
        ratio = f"{r.ours / r.theirs:.2f}" if r.theirs and r.unit in ("s",) else ""
        verdict = "-" if r.met is None else ("met" if r.met else "MISSED")
        print(f"{r.figure:<36}{r.ours:>11.2f} {r.unit:<3}{theirs:>13}{ratio:>8}  {r.target:<20}{verdict}")


def print_rto(b: Bench) -> None:
    if not b.restores:
        return
    print(
        f"\nRTO per phase (pgbench scale {b.args.scale}), projected to {b.args.project_tb:g} TiB + "
        f"{b.args.wal_per_day_gb:g} GiB of WAL (a day), from the measured throughputs:\n"
    )
    print(markdown(b.restores, int(b.args.project_tb * 2**40), int(b.args.wal_per_day_gb * 2**30)))
    measured = b.restores[0]
    if measured.database_bytes < 5 * 2**30 or measured.wal_bytes < 2 * 2**30:
        print("\n(small volumes: fixed costs such as process starts weigh on these throughputs; project from 10 GB)")


# --- setup -------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68 is ~1 GB, 680 ~10 GB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of backup, restore and replay (median)")
    parser.add_argument("--figures", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--segments", type=int, default=16, help="WAL segments pushed per tool (archive-cost)")
    parser.add_argument("--replay-wal-gb", type=float, default=2.0, help="WAL written after the base backups")
    parser.add_argument("--sustained-minutes", type=float, default=10.0)
    parser.add_argument("--headroom-seconds", type=int, default=60, help="archiving paused, then drained")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--project-tb", type=float, default=1.0, help="database size of the RTO projection (TiB)")
    parser.add_argument("--wal-per-day-gb", type=float, default=50.0, help="WAL replayed in the projection (GiB)")
    parser.add_argument(
        "--keep-logs", type=Path, help="copy each replay's server and prefetcher logs here (for profiling)"
    )
    args = parser.parse_args()
    args.figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {','.join(FIGURES)}")
    return args


def run_figures(b: Bench) -> None:
    figures = b.args.figures
    steps = [
        ("backup", figure_backup),
        ("restore", figure_restore),
        ("archive-cost", lambda bench: figure_archive_cost(bench, "rss" in figures)),
        ("replay", figure_replay),
        ("sustained", figure_sustained),
    ]
    for name, step in steps:
        if name in figures:
            b.log(f"--- {name}")
            step(b)
    if "rss" in figures:
        rss_rows(b)


def main() -> None:
    args = parse_args()
    # pgBackRest's configuration reads the bucket's S3 keys from Vault with the platform's AppRole: fail now, not
    # after `pgbench -i` (minutes at scale 680), on a stack where vault_config has not run yet.
    approle = os.environ.get("CQOX_VAULT_APPROLE_FILE")
    if not approle:
        raise SystemExit('CQOX_VAULT_APPROLE_FILE is not set: eval "$(.venv/bin/cqox-platform stack env)" first')
    if not Path(approle).exists():
        raise SystemExit(
            f"{approle} does not exist: materialize vault_config first "
            "(dagster asset materialize -m cqox_platform.definitions --select vault_config)"
        )
    work = Path(tempfile.mkdtemp(prefix="cqox-bench-backrest-", dir="/tmp"))
    work.chmod(0o755)
    s3 = boto3.client("s3", endpoint_url=os.environ["CQOX_S3_ENDPOINT"], config=client_config())
    bucket = os.environ["CQOX_S3_BUCKET"]
    pgdata = Path(os.environ["CQOX_PG_DATA"])
    purge: list[tuple[Archive, str]] = [(Archive(s3, bucket, "-"), f"{work.name}/")]
    b = None
    try:
        with scratch_database() as info, psycopg.connect(os.environ["CQOX_PG_DSN"], autocommit=True) as admin:
            dsn = psycopg.conninfo.make_conninfo(**info)
            print(f"pgbench -i -s {args.scale} ...", flush=True)
            started = time.perf_counter()
            subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), dsn], check=True, capture_output=True)
            size = admin.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0]
            sysid = str(admin.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
            port = int(admin.execute("SHOW port").fetchone()[0])
            print(f"cluster size {size / 2**30:.2f} GiB (pgbench -i {time.perf_counter() - started:.0f} s)")
            b = Bench(
                args=args,
                work=work,
                s3=s3,
                bucket=bucket,
                provider=stack_vault().key_provider("cqox-backups"),
                pgdata=pgdata,
                admin=admin,
                admin_dsn=os.environ["CQOX_PG_DSN"],
                dsn=dsn,
                sysid=sysid,
                backrest=configure(work, pgdata, port, str(pgdata.parent / "sock")),
                archive_command=wal.configured_archive_command(admin),
                bench_archive=Archive(s3, bucket, f"bench-{sysid}"),
            )
            b.purge.extend(purge)
            b.purge.append((b.bench_archive, f"{b.bench_archive.root}/"))
            b.backrest.run("stanza-create")
            run_figures(b)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for archive, prefix in b.purge if b else purge:  # leave the bucket as it was (WAL stays archived)
            archive.purge(prefix)
    print_table(b.rows)
    print_rto(b)


if __name__ == "__main__":
    main()
