"""Asynchronous WAL archiving, the pusher: it works ahead of PostgreSQL's archive_command (the default mode).

A daemon (one per data directory, started on demand by ``wal-push --async``, gone after a minute of idleness)
watches ``pg_wal/archive_status/*.ready`` and pushes every ready file, oldest first, ``PUSH_WORKERS`` at a time,
with one Vault login, one S3 client and one cached data key for many segments (``crypto.key_cache``: within the
archiver settings' window, 15 minutes or 4096 segments by default, each segment sealed under a key derived for it
alone), so a Vault outage shorter than the window costs no archiving while the pusher runs. With the window set to 0
every segment gets a fresh key, fetched ahead by a background thread (``PrefetchingKeyProvider``). After the
manifest is durable in S3 it leaves a marker bound to the exact file it read (see ``wal_async_client``);
archive_command only checks it. Errors leave an ``error`` marker that the fallback reports (exit 1, PostgreSQL
retries); the pusher retries too.

Memory is bounded: each in-flight push holds its file and, briefly, the compressed and sealed copies, so at most
``PUSH_WORKERS`` x 3 x the segment size (4 x 48 MiB = 192 MiB for 16 MiB segments of incompressible WAL), plus
``KEY_POOL`` data keys (one when cached). Semantics are those of the synchronous push: a segment counts as archived
only once its manifest is in S3.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cqox_platform.backup.archive.store import Archive, ArchiveClients
from cqox_platform.backup.wal.catchup import catch_up_after
from cqox_platform.backup.wal.push_client import (
    ERROR,
    OK,
    marker,
    marker_matches,
    spool_dir,
    write_marker,
    write_ok_marker,
)
from cqox_platform.backup.wal.segment import PushResult, push_wal_content, system_identifier
from cqox_platform.crypto.key_cache import CachingKeyProvider, KeyCachePolicy
from cqox_platform.crypto.keys import DataKey, DataKeyProvider
from cqox_platform.errors import BackupError, CqoxError
from cqox_platform.fsutil import single_instance_lock
from cqox_platform.memory import return_large_buffers

KEY_POOL = 4
KEY_MAX_AGE = 300.0
IDLE_EXIT = 60.0
PUSH_WORKERS = 4
POLL = 0.02
POLL_IDLE = 0.2  # after IDLE_POLL_AFTER s without work: 1 % of a core would otherwise go on polling
IDLE_POLL_AFTER = 2.0
RETRY_AFTER = 1.0


class PrefetchingKeyProvider:
    """Hands out a fresh Vault data key per object, fetched ahead by a background thread; each used once.

    The pusher's cost per segment stays one Transit ``datakey`` call, as the synchronous push's, but off the
    segment's critical path: a small pool (``depth`` keys, plaintext in this process's memory only) is refilled
    while segments are compressed and uploaded. Keys older than ``max_age`` are dropped unused, so a rotated
    Transit key is picked up. A Vault failure in the thread is raised to the next caller (the daemon then
    reports the segments as not archived and logs in again). The same design as Vault's own guidance for
    envelope encryption: one ``datakey`` per object; batching ``encrypt`` of local keys would need a wider policy.
    """

    def __init__(self, inner: DataKeyProvider, depth: int = KEY_POOL, max_age: float = KEY_MAX_AGE) -> None:
        self.inner, self.key_name, self.max_age = inner, inner.key_name, max_age
        self._pool: queue.Queue[tuple[float, DataKey] | BaseException] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="wal-push-keys", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._closed.is_set():
            try:
                item: tuple[float, DataKey] | BaseException = (time.monotonic(), self.inner.generate_data_key())
            except BaseException as exc:  # handed to the consumer, which decides
                item = exc
            while not self._closed.is_set():
                try:
                    self._pool.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                self._closed.wait(1.0)

    def generate_data_key(self) -> DataKey:
        while True:
            try:
                item = self._pool.get(timeout=60.0)
            except queue.Empty:
                raise CqoxError("no data key from Vault within 60 s for the WAL pusher.") from None
            if isinstance(item, BaseException):
                raise item
            born, key = item
            if time.monotonic() - born <= self.max_age:
                return key

    def unwrap(self, wrapped: str) -> bytes:
        return self.inner.unwrap(wrapped)

    def close(self) -> None:
        """Stop fetching and drop every unused key."""
        self._closed.set()
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                return


def pusher_key_provider(
    inner: DataKeyProvider, policy: KeyCachePolicy | None = None, log: Callable[[str], None] = print
) -> PrefetchingKeyProvider | CachingKeyProvider:
    """The cache within ``policy``'s window; a fresh prefetched key per segment when it is off or not given."""
    if policy is not None and policy.enabled:
        return CachingKeyProvider(inner, policy, log=lambda m: log(f"wal-push-daemon: {m}"))
    return PrefetchingKeyProvider(inner)


class FileChangedError(BackupError):
    """The WAL file changed while it was being archived; it is pushed again."""


def push_and_mark(archive: Archive, provider: DataKeyProvider, spool: Path, pgdata: Path, name: str, log) -> PushResult:
    """Push one ready file and mark it archived, the marker bound to the descriptor its bytes were read from."""
    path = Path(pgdata) / "pg_wal" / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CqoxError(f"cannot open WAL file {path}: {exc.strerror}.") from None
    try:
        before = os.fstat(fd)
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read()
        digest = hashlib.sha256(raw).hexdigest()
        result = push_wal_content(archive, provider, name, raw, digest)
        del raw
        catch_up_after(archive, provider, path, lambda m: log(f"wal-push-daemon: {m}"))
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise FileChangedError(f"{path} changed while it was archived; not marked, pushing it again.")
        marker(spool, ERROR, name).unlink(missing_ok=True)
        write_ok_marker(spool, path, fd, digest)
    finally:
        os.close(fd)
    return result


def consume_markers(spool: Path, status_dir: Path) -> int:
    """Remove ``ok`` markers PostgreSQL is done with (no ``.ready`` any more), so the spool never grows."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(spool / OK):
            if entry.name.startswith("."):
                continue
            if not (status_dir / f"{entry.name}.ready").exists():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of the archiver settings: a replaced or rewritten file means new clients."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


Connect = Callable[[], ArchiveClients]


def run_daemon(
    settings_path: Path,
    pgdata: Path,
    connect: Connect,
    idle_exit: float = IDLE_EXIT,
    workers: int = PUSH_WORKERS,
    log: Callable[[str], None] = print,
) -> None:
    """Push ready files until idle for ``idle_exit`` seconds. Exits at once if another daemon runs.

    ``connect`` builds the S3 client and key provider from the archiver settings at ``settings_path`` (the
    caller's, so ``backup/`` never builds Vault clients); it is called again after a failure or a change of
    that file.
    """
    spool = spool_dir(settings_path, pgdata)
    spool.mkdir(parents=True, exist_ok=True)
    lock = single_instance_lock(spool / "daemon.lock")
    if lock is None:
        return
    return_large_buffers()
    try:
        Pusher(settings_path, Path(pgdata), connect, workers, log).run(idle_exit)
    finally:
        with contextlib.suppress(OSError):
            lock.close()


class Pusher:
    """The pusher's loop, as wal-g's ``BgUploader``: ``reap`` finished pushes, ``reload_if_changed`` the
    clients, look at what is ``pending``, ``submit`` what is due. One instance per daemon; not thread-safe
    (only ``push_and_mark`` runs in the worker threads)."""

    def __init__(
        self, settings_path: Path, pgdata: Path, connect: Connect, workers: int, log: Callable[[str], None]
    ) -> None:
        self.settings_path = settings_path
        self.pgdata = pgdata
        self.connect = connect
        self.workers = workers
        self.log = log
        self.spool = spool_dir(settings_path, pgdata)
        self.status_dir = pgdata / "pg_wal" / "archive_status"
        self.archive: Archive | None = None
        self.provider: PrefetchingKeyProvider | CachingKeyProvider | None = None
        self.loaded_from: tuple[int, int, int] | None = None  # the settings file the clients were built from
        self.relogin = False
        self.in_flight: dict[str, Future[PushResult]] = {}
        self.retry_at: dict[str, float] = {}
        self.idle_since = time.monotonic()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wal-push")

    def run(self, idle_exit: float) -> None:
        """Until idle for ``idle_exit`` seconds with nothing in flight, or until ``pg_wal`` is gone."""
        try:
            while self.in_flight or time.monotonic() - self.idle_since < idle_exit:
                if not self.status_dir.is_dir():
                    self.log(f"{self.status_dir} is gone: exiting")
                    return
                self.reap()
                self.reload_if_changed()
                consume_markers(self.spool, self.status_dir)
                now = time.monotonic()
                pending = self.pending()
                if pending or self.in_flight:
                    self.idle_since = now  # failing files waiting for their retry count as work, not idleness
                due = [n for n in pending if self.retry_at.get(n, 0.0) <= now]
                if not due or len(self.in_flight) >= self.workers or self.relogin:
                    time.sleep(POLL if now - self.idle_since < IDLE_POLL_AFTER else POLL_IDLE)
                    continue
                self.submit(due)
        finally:
            self.close()

    def reap(self) -> None:
        """Log each finished push; a failure becomes an ``error`` marker, a retry time and (unless the file only
        changed under it) a new login."""
        for name, future in [(n, f) for n, f in self.in_flight.items() if f.done()]:
            del self.in_flight[name]
            try:
                result = future.result()
            except CqoxError as exc:
                self._failed(name, exc)
                self.relogin = self.relogin or not isinstance(exc, FileChangedError)
                continue
            except Exception as exc:  # a bug must not kill the pusher silently: report it as not archived
                self._failed(name, CqoxError(f"unexpected {type(exc).__name__}: {exc}"))
                continue
            verb = "archived" if result.uploaded else "already archived"
            self.log(f"wal-push-daemon: {verb} {name} ({result.seconds:.2f} s)")

    def reload_if_changed(self) -> None:
        """Drop the clients once nothing is in flight if the settings file changed or a push failed: the next
        ``submit`` logs in again (Vault may have been sealed, credentials rotated, the endpoint moved)."""
        if self.archive is not None and _file_identity(self.settings_path) != self.loaded_from:
            # The endpoint, bucket or credentials may have moved (an operator, a drill): finish what is in
            # flight with the old clients, then log in again from the file as it is now.
            self.relogin = True
            if not self.in_flight:
                self.log(f"wal-push-daemon: {self.settings_path} changed: reloading the archiver settings")
        if self.relogin and not self.in_flight:
            if self.provider is not None:
                self.provider.close()
            self.archive = self.provider = None
            self.relogin = False

    def pending(self) -> list[str]:
        """Ready files, oldest first, that are neither in flight nor already marked archived."""
        ready = sorted(p.name[: -len(".ready")] for p in self.status_dir.glob("*.ready"))
        return [
            n for n in ready if n not in self.in_flight and not marker_matches(self.spool, self.pgdata / "pg_wal" / n)
        ]

    def submit(self, due: list[str]) -> None:
        """Start pushing as many of ``due`` as there are free workers, logging in first if needed; without
        clients (Vault sealed or unreachable, settings unreadable) every due file is reported not archived."""
        if self.archive is None or self.provider is None:
            try:
                self.loaded_from = _file_identity(self.settings_path)
                clients = self.connect()
                self.archive = Archive(clients.s3, clients.bucket, system_identifier(self.pgdata))
                self.provider = pusher_key_provider(clients.provider, clients.key_cache, self.log)
            except CqoxError as exc:
                for name in due:
                    self._failed(name, exc)
                return
        for name in due[: self.workers - len(self.in_flight)]:
            self.in_flight[name] = self.pool.submit(
                push_and_mark, self.archive, self.provider, self.spool, self.pgdata, name, self.log
            )

    def close(self) -> None:
        """Wait for the pushes in flight, then drop every unused data key."""
        self.pool.shutdown(wait=True)
        if self.provider is not None:
            self.provider.close()

    def _failed(self, name: str, exc: CqoxError) -> None:
        """``name`` is not archived: the fallback reports ``exc`` to PostgreSQL; tried again after RETRY_AFTER."""
        write_marker(self.spool, ERROR, name, str(exc))
        self.retry_at[name] = time.monotonic() + RETRY_AFTER
        self.log(f"wal-push-daemon: {name} NOT archived: {exc}")
