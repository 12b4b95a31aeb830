"""The WAL prefetcher behind ``wal-fetch --prefetch N``: fetch and verify the next N segments ahead of replay.

Like pgBackRest's asynchronous ``archive-get``: one process per data directory and bucket (started by the
first ``wal-fetch`` call, gone after ``IDLE_EXIT`` seconds without a request or when the data directory is
removed, taking its spool with it), one Vault login and one S3 client for the whole replay, ``workers``
segments fetched in parallel (zstd, AES-GCM and sockets release the GIL).

It reads ``want`` (the segment PostgreSQL asked for last) and plans the next ``depth`` segments on the path
recovery will take: the newest timeline whose history file (``T.history``, probed like PostgreSQL's
``recovery_target_timeline = 'latest'``) has the requested timeline as an ancestor decides which timeline each
following segment is read from, exactly as ``walnames.segment_timeline`` does for continuity checks. Anything in
the spool outside the plan (consumed, or of a timeline recovery has left) is deleted. Each segment is fetched
with ``read_wal`` (authenticated decryption, the archive's SHA-256) and its first page header is checked against
its name before it becomes ``ready/<name>``; a segment that fails is recorded in ``error/<name>`` so the
request for it stops recovery (exit 255). Absence and unreachable S3 are never recorded: the direct fetch at
request time decides those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cqox_platform.backup.archive.store import Archive, ArchiveClients, ArchiveUnreachableError
from cqox_platform.backup.archive.wal_names import (
    SEGMENT_RE,
    Segment,
    TimelineSwitch,
    parse_history,
    segment_timeline,
    timeline_ranges,
)
from cqox_platform.backup.wal.prefetch_client import (
    SegmentCheck,
    control_system_id,
    digest_path,
    error_path,
    inflight_path,
    posix_cksum,
    ready_path,
    record_path,
    spool_for,
    write_atomic,
)
from cqox_platform.backup.wal.segment import WalMissingError, read_wal, system_identifier
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import CqoxError
from cqox_platform.fsutil import single_instance_lock

IDLE_EXIT = 60.0
HISTORY_PROBE_EVERY = 10.0
MISSING_RETRY = 2.0


class Timelines:
    """The newest timeline in the archive and its ancestry, re-probed at most every ``HISTORY_PROBE_EVERY`` s."""

    def __init__(self, archive: Archive, provider: DataKeyProvider) -> None:
        self.archive, self.provider = archive, provider
        self.histories: dict[int, list[TimelineSwitch]] = {}
        self.latest, self.probed_at = 1, 0.0

    def _history(self, timeline: int) -> list[TimelineSwitch] | None:
        if timeline not in self.histories:
            name = f"{timeline:08X}.history"
            try:
                text = read_wal(self.archive, self.provider, name).decode()
            except WalMissingError:
                return None
            self.histories[timeline] = parse_history(text, where=self.archive.where(self.archive.wal_key(name)))
        return self.histories[timeline]

    def ranges_for(self, timeline: int) -> list[tuple[int, int, int]]:
        """Timeline ranges of the newest timeline descending from ``timeline`` (or of ``timeline`` itself)."""
        now = time.monotonic()
        if now - self.probed_at > HISTORY_PROBE_EVERY or self.latest < timeline:
            self.probed_at = now
            probe = max(self.latest, timeline)
            while self._history(probe + 1) is not None:
                probe += 1
            self.latest = probe
        if self.latest > timeline:
            ancestry = self._history(self.latest) or []
            ranges = timeline_ranges(self.latest, ancestry)
            if any(tli == timeline for tli, _, _ in ranges):
                return ranges
        return [(timeline, 0, 1 << 64)]


def plan(want: str, depth: int, timelines: Timelines) -> list[str]:
    """The ``depth`` segments after ``want`` on the path recovery takes from it."""
    current = Segment.parse(want)
    ranges = timelines.ranges_for(current.timeline)
    if segment_timeline(current.segno, ranges) != current.timeline:
        ranges = [(current.timeline, 0, 1 << 64)]  # PostgreSQL is not on that path: follow what it asks
    return [Segment(segment_timeline(s, ranges), s).name for s in range(current.segno + 1, current.segno + 1 + depth)]


class Prefetcher:
    def __init__(
        self,
        archive: Archive,
        provider: DataKeyProvider,
        spool: Path,
        pgdata: Path,
        bucket: str | None,
        depth: int,
        workers: int,
        log,
    ) -> None:
        self.archive, self.provider, self.spool, self.pgdata = archive, provider, spool, pgdata
        self.bucket, self.depth, self.log = bucket or "", depth, log
        self.system_id = control_system_id(pgdata)
        self.timelines = Timelines(archive, provider)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wal-prefetch")
        self.busy: set[str] = set()
        self.missing: dict[str, float] = {}
        self.lock = threading.Lock()
        for sub in ("ready", "error", "inflight"):
            (spool / sub).mkdir(parents=True, exist_ok=True)

    def step(self, want: str) -> None:
        wanted = plan(want, self.depth, self.timelines)
        keep = {want, *wanted}
        self._prune(keep)
        now = time.monotonic()
        for name in wanted:
            with self.lock:
                if name in self.busy or now - self.missing.get(name, -1e9) < MISSING_RETRY:
                    continue
                if ready_path(self.spool, name).exists() or error_path(self.spool, name).exists():
                    continue
                self.busy.add(name)
            inflight_path(self.spool, name).touch()
            self.pool.submit(self._fetch, name)

    def _prune(self, keep: set[str]) -> None:
        """Delete spool files recovery will not ask for (consumed, or another timeline's)."""
        for sub in ("ready", "error"):
            for path in (self.spool / sub).iterdir():
                name = path.name.removesuffix(".json").removesuffix(".cksum")
                if name.startswith("."):
                    continue
                if name not in keep:
                    path.unlink(missing_ok=True)

    def _fetch(self, name: str) -> None:
        try:
            raw = read_wal(self.archive, self.provider, name)
            problem = SegmentCheck(name, self.system_id).problem(raw[:64])
            if problem is not None:
                raise CqoxError(
                    f"{self.archive.where(self.archive.wal_key(name))} does not answer its name: {problem}."
                )
            tmp = self.spool / "ready" / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(raw)
            record = {
                "name": name,
                "bucket": self.bucket,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "system_id": self.system_id,
            }
            write_atomic(record_path(self.spool, name), json.dumps(record))
            write_atomic(digest_path(self.spool, name), posix_cksum(raw) + "\n")
            os.replace(tmp, ready_path(self.spool, name))
            self.log(f"wal-prefetch: {name} ready ({len(raw) / 2**20:.1f} MiB)")
        except WalMissingError:
            with self.lock:
                self.missing[name] = time.monotonic()
        except ArchiveUnreachableError as exc:
            self.log(f"wal-prefetch: {name} not fetched (S3 unreachable, the request will fetch it): {exc}")
            with self.lock:
                self.missing[name] = time.monotonic()
        except Exception as exc:  # corrupt, wrong key, wrong header: the request for it must stop recovery
            message = str(exc) if isinstance(exc, CqoxError) else f"unexpected {type(exc).__name__}: {exc}"
            write_atomic(error_path(self.spool, name), message)
            self.log(f"wal-prefetch: {name} UNUSABLE: {message}")
        finally:
            inflight_path(self.spool, name).unlink(missing_ok=True)
            with self.lock:
                self.busy.discard(name)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def run_daemon(
    settings_path: Path,
    pgdata: Path,
    bucket: str | None,
    depth: int,
    connect: Callable[[], ArchiveClients],
    *,
    workers: int = 4,
    idle_exit: float = IDLE_EXIT,
    log=print,
) -> None:
    """Prefetch ahead of ``want`` until idle; exits at once if another prefetcher owns the spool.

    ``connect`` builds the S3 client and key provider (the caller's, from the archiver settings); it is called
    until it succeeds, once per replay.
    """
    try:
        spool = spool_for(settings_path, pgdata, bucket)
    except CqoxError as exc:  # no cluster to prefetch for: requests fetch directly
        log(f"wal-prefetch: not started: {exc}")
        return
    spool.mkdir(parents=True, exist_ok=True)
    lock = single_instance_lock(spool / "daemon.lock")
    if lock is None:
        return
    for sub in ("ready", "error", "inflight"):  # a predecessor killed before its cleanup: start from nothing
        shutil.rmtree(spool / sub, ignore_errors=True)
    prefetcher: Prefetcher | None = None
    last_want, idle_since = None, time.monotonic()
    try:
        while time.monotonic() - idle_since < idle_exit:
            if not (Path(pgdata) / "global").is_dir():
                log(f"wal-prefetch: {pgdata} is gone: exiting")
                break
            try:
                want = (spool / "want").read_text().strip()
            except OSError:
                want = ""
            if not SEGMENT_RE.match(want):
                time.sleep(0.05)
                continue
            if want != last_want:
                idle_since, last_want = time.monotonic(), want
            try:
                if prefetcher is None:
                    clients = connect()
                    archive = Archive(clients.s3, bucket or clients.bucket, system_identifier(pgdata))
                    prefetcher = Prefetcher(archive, clients.provider, spool, Path(pgdata), bucket, depth, workers, log)
                prefetcher.step(want)
            except CqoxError as exc:  # no clients yet (Vault sealed, S3 down): requests fetch directly
                log(f"wal-prefetch: cannot prefetch after {want}: {exc}")
                time.sleep(1.0)
            time.sleep(0.05)
    finally:
        if prefetcher is not None:
            prefetcher.close()
        # Spool files are only useful to this replay; nothing stale is left for a later one.
        for sub in ("ready", "error", "inflight"):
            shutil.rmtree(spool / sub, ignore_errors=True)
        if not (Path(pgdata) / "global").is_dir():  # a drill's scratch cluster: its spool has no further use
            shutil.rmtree(spool, ignore_errors=True)
        with contextlib.suppress(OSError):
            (spool / "want").unlink()
        with contextlib.suppress(OSError):
            lock.close()
