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
import json
import os
import shutil
import socketserver
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cqox_platform.backup.archive.store import Archive, ArchiveClients, ArchiveUnreachableError
from cqox_platform.backup.archive.wal_names import (
    HISTORY_RE,
    SEGMENT_RE,
    Segment,
    TimelineSwitch,
    parse_history,
    segment_timeline,
    timeline_ranges,
)
from cqox_platform.backup.wal.prefetch_client import (
    PrefetchClient,
    PrefetchRefused,
    SegmentCheck,
    control_system_id,
    digest_path,
    error_path,
    inflight_path,
    posix_cksum,
    prefetch_spool,
    ready_path,
    record_path,
    relay_socket,
    spool_for,
    write_atomic,
)
from cqox_platform.backup.wal.segment import (
    WalMissingError,
    fetch_wal,
    read_wal,
    read_wal_with_digest,
    system_identifier,
)
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import CqoxError
from cqox_platform.fsutil import single_instance_lock
from cqox_platform.memory import return_large_buffers

IDLE_EXIT = 60.0
HISTORY_PROBE_EVERY = 10.0
MISSING_RETRY = 2.0
#: Segments fetched at once, each holding a 16 MiB segment in memory while it is verified: with two, replay
#: caught up with the prefetcher on a loaded 2-core machine (decryption, zstd and sockets release the GIL).
FETCH_WORKERS = 3
#: restore_command's exit code that stops recovery instead of ending it.
FETCH_FATAL = 255


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
        system_id: int | None = None,
    ) -> None:
        self.archive, self.provider, self.spool, self.pgdata = archive, provider, spool, pgdata
        self.bucket, self.depth, self.log = bucket or "", depth, log
        self.system_id = control_system_id(pgdata) if system_id is None else system_id
        self.timelines = Timelines(archive, provider)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wal-prefetch")
        self.busy: set[str] = set()
        self.readied: set[str] = set()  # made ready and not pruned: gone from ready/ means recovery took it
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

    def consumed(self) -> str | None:
        """The latest segment recovery took from ready/ since the last call (the shell hand-over moves it away
        without a word: a file gone from the spool is where replay is), or None."""
        with self.lock:
            gone = [name for name in self.readied if not ready_path(self.spool, name).exists()]
            self.readied.difference_update(gone)
        return max(gone, key=lambda name: Segment.parse(name).segno) if gone else None

    def _prune(self, keep: set[str]) -> None:
        """Delete spool files recovery will not ask for (consumed, or another timeline's)."""
        with self.lock:
            self.readied.intersection_update(keep)
        for sub in ("ready", "error"):
            for path in (self.spool / sub).iterdir():
                name = path.name.removesuffix(".json").removesuffix(".cksum")
                if name.startswith("."):
                    continue
                if name not in keep:
                    path.unlink(missing_ok=True)

    def _fetch(self, name: str) -> None:
        try:
            raw, sha256 = read_wal_with_digest(self.archive, self.provider, name)
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
                "sha256": sha256,
                "system_id": self.system_id,
            }
            write_atomic(record_path(self.spool, name), json.dumps(record))
            write_atomic(digest_path(self.spool, name), posix_cksum(raw) + "\n")
            os.replace(tmp, ready_path(self.spool, name))
            with self.lock:
                self.readied.add(name)
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


class Daemon:
    """One prefetcher per spool: the prefetch loop, and the answers to the restore_command relay's requests.

    Both share one S3 client and one Vault login, made on first need (``connect``) and retried until it works.
    """

    def __init__(
        self,
        settings_path: Path,
        spool: Path,
        pgdata: Path,
        bucket: str | None,
        depth: int,
        connect: Callable[[], ArchiveClients],
        workers: int,
        log,
        system_id: int | None = None,
    ) -> None:
        self.settings_path, self.spool, self.pgdata, self.bucket = settings_path, spool, Path(pgdata), bucket
        self.depth, self.connect, self.workers, self.log = depth, connect, workers, log
        self.system_id = system_id  # given while the data directory is still being restored (no pg_control yet)
        self.prefetcher: Prefetcher | None = None
        self.lock = threading.Lock()
        self.active_at = time.monotonic()

    def ensure(self) -> Prefetcher:
        """The prefetcher, connecting first if needed; CqoxError when S3 or Vault cannot be reached yet."""
        with self.lock:
            if self.prefetcher is None:
                clients = self.connect()
                system_id = str(self.system_id) if self.system_id is not None else system_identifier(self.pgdata)
                archive = Archive(clients.s3, self.bucket or clients.bucket, system_id)
                self.prefetcher = Prefetcher(
                    archive,
                    clients.provider,
                    self.spool,
                    self.pgdata,
                    self.bucket,
                    self.depth,
                    self.workers,
                    self.log,
                    self.system_id,
                )
            return self.prefetcher

    def answer(self, name: str, destination: str) -> tuple[int, str] | None:
        """restore_command's answer for ``name`` written to ``destination``: (exit code, message), or None to
        leave the request to the CLI (no clients yet, a request this daemon should not answer).

        The same steps and checks as ``cqox-platform wal-fetch --prefetch``: a segment the prefetcher verified is
        handed over with its record, digest and header checked; anything else is fetched from the archive now
        (authenticated decryption, the archive's SHA-256), and only S3's proof of absence answers 1.
        """
        self.active_at = time.monotonic()
        if not SEGMENT_RE.match(name) and not HISTORY_RE.match(name):
            return None  # partial and backup-history files: rare, left to the CLI
        target = Path(destination)
        if not target.is_absolute() or target.parent.resolve() != (self.pgdata / "pg_wal").resolve():
            return None  # not where PostgreSQL restores to: the CLI decides, as for any other caller
        try:
            prefetcher = self.ensure()
        except CqoxError as exc:
            self.log(f"wal-prefetch: cannot answer for {name} yet, the CLI will: {exc}")
            return None
        fatal = f"wal-fetch: {name} could not be restored, stopping recovery: "
        if SEGMENT_RE.match(name):
            write_atomic(self.spool / "want", name)
            try:
                served = PrefetchClient(self.settings_path, self.pgdata, self.bucket).serve(name, target)
            except PrefetchRefused as exc:
                return FETCH_FATAL, fatal + _one_line(str(exc))
            except CqoxError as exc:
                self.log(f"wal-prefetch: {name} not served from the spool, fetching it: {exc}")
                served = None
            if served is not None:
                return 0, f"wal-fetch: restored {name} ({served / 2**20:.1f} MiB, prefetched)"
        try:
            size = fetch_wal(prefetcher.archive, prefetcher.provider, name, target)
        except WalMissingError:
            return 1, f"wal-fetch: {name} is not in the archive"
        except Exception as exc:  # anything short of proven absence must not end recovery
            reason = str(exc) if isinstance(exc, CqoxError) else f"unexpected {type(exc).__name__}: {exc}"
            return FETCH_FATAL, fatal + _one_line(reason)
        return 0, f"wal-fetch: restored {name} ({size / 2**20:.1f} MiB)"

    def serve_requests(self) -> socketserver.ThreadingUnixStreamServer | None:
        """Listen on the spool's socket (only this OS user may connect) in a thread; None when it cannot."""
        path = relay_socket(self.spool)
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = self.rfile.readline(4096).decode(errors="replace").rstrip("\n")
                name, _, destination = request.partition("\0")
                try:
                    answer = daemon.answer(name, destination)
                except Exception as exc:  # a bug here: the CLI decides, the relay never reads it as absent
                    daemon.log(f"wal-prefetch: request for {name} failed, left to the CLI: {exc!r}")
                    answer = None
                if answer is not None:
                    code, message = answer
                    self.wfile.write(f"{code} {message}\n".encode())

        try:
            path.unlink(missing_ok=True)  # this process holds the spool's lock: a socket here is a dead one's
            old_umask = os.umask(0o177)
            try:
                server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
            finally:
                os.umask(old_umask)
        except OSError as exc:  # e.g. a path longer than a unix socket allows: the CLI answers instead
            self.log(f"wal-prefetch: not answering requests on {path}: {exc}")
            return None
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="wal-prefetch-requests", daemon=True).start()
        return server

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()


def _has_global(pgdata: Path) -> bool:
    """Whether ``pgdata`` holds a ``global`` directory this user can see (a data directory still being restored
    is root's: not yet)."""
    try:
        return (pgdata / "global").is_dir()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user: the restore runs as root)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_daemon(
    settings_path: Path,
    pgdata: Path,
    bucket: str | None,
    depth: int,
    connect: Callable[[], ArchiveClients],
    *,
    workers: int = FETCH_WORKERS,
    idle_exit: float = IDLE_EXIT,
    log=print,
    start_at: str | None = None,
    system_id: int | None = None,
    restore_pid: int | None = None,
) -> None:
    """Prefetch ahead of ``want`` and answer the relay until idle; exits at once if another prefetcher owns the
    spool.

    ``start_at`` (the backup's first segment, from a restore that starts the prefetcher before its server) is
    prefetched before PostgreSQL asks for anything, unless a request already said where replay is.

    ``system_id`` and ``restore_pid`` start it while ``restore_pid`` is still writing the data directory (no
    ``pg_control`` yet): the spool and every segment's header check use ``system_id`` (the backup's), it stays
    while that process lives, and it exits when that process is gone before the files are in, or when the
    ``pg_control`` that arrives names another cluster (then every request goes to the CLI).

    ``connect`` builds the S3 client and key provider (the caller's, from the archiver settings); it is called
    until it succeeds, once per replay.
    """
    try:
        spool = (
            spool_for(settings_path, pgdata, bucket)
            if system_id is None
            else prefetch_spool(settings_path, pgdata, bucket, system_id)
        )
    except CqoxError as exc:  # no cluster to prefetch for: requests fetch directly
        log(f"wal-prefetch: not started: {exc}")
        return
    spool.mkdir(parents=True, exist_ok=True)
    lock = single_instance_lock(spool / "daemon.lock")
    if lock is None:
        return
    return_large_buffers()
    for sub in ("ready", "error", "inflight"):  # a predecessor killed before its cleanup: start from nothing
        shutil.rmtree(spool / sub, ignore_errors=True)
    daemon = Daemon(settings_path, spool, Path(pgdata), bucket, depth, connect, workers, log, system_id)
    for sub in ("ready", "error", "inflight"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    server = daemon.serve_requests()
    if system_id is not None:
        log(f"wal-prefetch: started for cluster {system_id} while {pgdata} is restored")
    if start_at and SEGMENT_RE.match(start_at) and Segment.parse(start_at).segno > 0 and not (spool / "want").exists():
        first = Segment.parse(start_at)
        write_atomic(spool / "want", Segment(first.timeline, first.segno - 1).name)  # plans start after ``want``
    want = last_want = last_asked = ""
    files_in = system_id is None  # without system_id, spool_for read pg_control: the files are in
    try:
        while time.monotonic() - daemon.active_at < idle_exit:
            if not files_in:
                found = control_system_id(Path(pgdata))
                if found is not None and found != system_id:
                    log(f"wal-prefetch: {pgdata} holds cluster {found}, not {system_id}: exiting")
                    break
                files_in = found is not None
                if not files_in:
                    if restore_pid is None or not _alive(restore_pid):
                        log(f"wal-prefetch: the restore into {pgdata} ended before its files were in: exiting")
                        break
                    daemon.active_at = time.monotonic()  # not idle: the server has not started yet
            if files_in and not _has_global(Path(pgdata)):
                log(f"wal-prefetch: {pgdata} is gone: exiting")
                break
            try:
                asked = (spool / "want").read_text().strip()  # what a request said (relay, CLI)
            except OSError:
                asked = ""
            if asked != last_asked and SEGMENT_RE.match(asked):
                want = last_asked = asked
            taken = daemon.prefetcher.consumed() if daemon.prefetcher is not None else None
            if taken is not None:  # handed over by the shell since the last look
                want = taken
            if not SEGMENT_RE.match(want):
                time.sleep(0.05)
                continue
            if want != last_want:
                daemon.active_at, last_want = time.monotonic(), want
            try:
                daemon.ensure().step(want)
            except CqoxError as exc:  # no clients yet (Vault sealed, S3 down): requests fetch directly
                log(f"wal-prefetch: cannot prefetch after {want}: {exc}")
                time.sleep(1.0)
            time.sleep(0.05)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
            relay_socket(spool).unlink(missing_ok=True)
        daemon.close()
        # Spool files are only useful to this replay; nothing stale is left for a later one.
        for sub in ("ready", "error", "inflight"):
            shutil.rmtree(spool / sub, ignore_errors=True)
        if not _has_global(Path(pgdata)):  # a drill's scratch cluster: its spool has no further use
            shutil.rmtree(spool, ignore_errors=True)
        with contextlib.suppress(OSError):
            (spool / "want").unlink()
        with contextlib.suppress(OSError):
            lock.close()
