"""Asynchronous WAL archiving, the pusher: it works ahead of PostgreSQL's archive_command.

``wal-push --async`` keeps archive_command's cost per segment at a process start and a file check: a daemon
(one per data directory, started on demand by the first call, gone after a minute of idleness) watches
``pg_wal/archive_status/*.ready``, pushes every ready segment with one Vault login, one S3 client and a fresh
data key per segment (fetched ahead by a background thread, used once, held in memory only: see
``PrefetchingKeyProvider``), and leaves a marker per result in the spool directory. archive_command then only
reports the marker: ``ok`` -> exit 0, ``error`` -> exit 1 with the daemon's message (PostgreSQL retries),
nothing yet -> wait, then exit 1.
Semantics are those of the synchronous push: a segment counts as archived only once its manifest is in S3.
"""

from __future__ import annotations

import contextlib
import fcntl
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cqox_platform.backup.archive import Archive
from cqox_platform.backup.archiver_settings import ArchiverSettings, archiver_clients
from cqox_platform.backup.wal import push_wal, system_identifier
from cqox_platform.backup.wal_async_client import marker, spool_dir, write_marker
from cqox_platform.backup.wal_catchup import catch_up_ancestors
from cqox_platform.backup.walnames import HISTORY_RE
from cqox_platform.crypto.keys import DataKey, DataKeyProvider
from cqox_platform.errors import CqoxError

KEY_POOL = 4
KEY_MAX_AGE = 300.0
IDLE_EXIT = 60.0


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


def pusher_key_provider(inner: DataKeyProvider) -> PrefetchingKeyProvider:
    return PrefetchingKeyProvider(inner)


def _push_batch(archive, provider, spool: Path, pgdata: Path, todo: list[str], workers: int, log):
    """Push ready files on ``workers`` threads (zstd, AES and sockets release the GIL); return the failures."""
    failures: list[tuple[str, CqoxError]] = []

    def one(name: str) -> None:
        try:
            result = push_wal(archive, provider, pgdata / "pg_wal" / name)
            if HISTORY_RE.match(name):  # a new timeline: push what the old leader never did (see wal_catchup)
                catch_up_ancestors(archive, provider, pgdata / "pg_wal" / name, lambda m: log(f"wal-push-daemon: {m}"))
        except CqoxError as exc:
            failures.append((name, exc))
            return
        marker(spool, "error", name).unlink(missing_ok=True)
        write_marker(spool, "ok", name)
        verb = "archived" if result.uploaded else "already archived"
        log(f"wal-push-daemon: {verb} {name} ({result.seconds:.2f} s)")

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wal-push") as pool:
        list(pool.map(one, todo))
    return failures


def run_daemon(settings_path: Path, pgdata: Path, idle_exit: float = IDLE_EXIT, workers: int = 2, log=print) -> None:
    """Push ready segments until idle for ``idle_exit`` seconds. Exits at once if another daemon runs."""
    spool = spool_dir(settings_path, pgdata)
    spool.mkdir(parents=True, exist_ok=True)
    lock = open(spool / "daemon.lock", "a")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    status_dir = Path(pgdata) / "pg_wal" / "archive_status"
    archive: Archive | None = None
    provider: PrefetchingKeyProvider | None = None
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < idle_exit:
        if not status_dir.is_dir():
            log(f"{status_dir} is gone: exiting")
            return
        ready = sorted(p.name[: -len(".ready")] for p in status_dir.glob("*.ready"))
        todo = [n for n in ready if not marker(spool, "ok", n).exists()]
        if not todo:
            time.sleep(0.1)
            continue
        idle_since = time.monotonic()
        try:
            if archive is None or provider is None:
                settings = ArchiverSettings.load(settings_path)
                clients = archiver_clients(settings)
                archive = Archive(clients.s3, clients.bucket, system_identifier(pgdata))
                provider = pusher_key_provider(clients.provider)
            failures = _push_batch(archive, provider, spool, Path(pgdata), todo, workers, log)
        except CqoxError as exc:  # no clients (Vault sealed or unreachable, settings unreadable)
            failures = [(todo[0], exc)]
        for name, exc in failures:
            write_marker(spool, "error", name, str(exc))
            log(f"wal-push-daemon: {name} NOT archived: {exc}")
        if failures:
            if provider is not None:
                provider.close()
            archive = provider = None  # log in again next time (Vault may have been sealed)
            time.sleep(1.0)
        _clean_stale_markers(spool)
    if provider is not None:
        provider.close()
    with contextlib.suppress(OSError):
        lock.close()


def _clean_stale_markers(spool: Path, older_than: float = 3600.0) -> None:
    cutoff = time.time() - older_than
    for done in (spool / "ok").glob("*"):
        with contextlib.suppress(OSError):
            if done.stat().st_mtime < cutoff:
                done.unlink()
