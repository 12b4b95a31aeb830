"""The restore_command side of WAL prefetch: hand PostgreSQL a segment the prefetcher already verified.

Replay asks for one segment per ``restore_command`` call; fetched one by one, a day of WAL is bounded by the
latency of a Vault login, two GETs and a decryption per segment. ``wal-fetch --prefetch N`` instead tells a
background prefetcher (``wal_prefetch``; one per data directory and bucket, started on demand by the first
call, gone after a minute without requests) which segment PostgreSQL is at, and the prefetcher fetches, decrypts
and verifies the next N segments in parallel into a spool directory. A later call then only claims its file.

What a spool file may answer is checked again here, so nothing stale or of another timeline is ever served:

- the spool belongs to one data directory, bucket *and cluster* (the system identifier in the data directory's
  ``pg_control``), and ``restore_command_for`` empties it before a restored server starts: what a killed
  prefetcher left for another cluster restored into the same path, or for an earlier replay, is never handed
  over by the shell, which compares only the file's own checksum;
- files are keyed by the full segment name (timeline included) and claimed by an atomic rename, never by
  segment number; the prefetcher's record beside each file names the segment, bucket and system identifier;
- the content's SHA-256 must equal the one the prefetcher computed after authenticated decryption (which also
  compared it with the archive's own digest), and the segment's first page header must hold the segment's own
  address, the cluster's system identifier and a timeline no later than the name's (the first segment of a new
  timeline starts with its parent's pages);
- negative answers are never cached: a segment the spool does not hold is fetched directly, so "not in the
  archive" (exit 1) is always decided by S3 at the moment PostgreSQL asks.

A segment the prefetcher found corrupt (authentication, digest or header failed) is ``PrefetchRefused``, which
the command turns into exit 255: the same answer a direct fetch of that segment gives. Only the standard
library is imported: this runs once per segment and its start-up is the cost of a hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.backup.archive.wal_names import SEGMENT_RE, WAL_SEGMENT_SIZE, Segment
from cqox_platform.errors import BackupError, CqoxError

DEFAULT_DEPTH = 8
INFLIGHT_WAIT = 60.0
XLP_LONG_HEADER = 0x0002
# XLogLongPageHeaderData: magic, info, timeline, page address, rem_len, (pad), system id, seg size, block size
_LONG_HEADER = struct.Struct("<HHIQI4xQII")


class PrefetchRefused(BackupError):
    """The prefetcher found this segment unusable (corrupt, wrong key, wrong header): stop recovery."""


def prefetch_spool(settings_path: Path, pgdata: Path, bucket: str | None, system_id: int) -> Path:
    """One spool (and one prefetcher) per data directory, bucket and cluster, beside the archiver's settings.

    The system identifier is part of the key because a path is reused: a spool a killed prefetcher left for a
    restore of one cluster must never be found by the next restore of another cluster into the same path.
    """
    key = f"{Path(pgdata).resolve()}\0{bucket or ''}\0{system_id}"
    return Path(settings_path).parent / "prefetch" / hashlib.sha256(key.encode()).hexdigest()[:16]


def spool_for(settings_path: Path, pgdata: Path, bucket: str | None) -> Path:
    """The spool of the cluster whose ``pg_control`` is in ``pgdata``; CqoxError when it cannot be read."""
    system_id = control_system_id(pgdata)
    if system_id is None:
        raise CqoxError(f"cannot read the system identifier in {Path(pgdata) / 'global' / 'pg_control'}.")
    return prefetch_spool(settings_path, pgdata, bucket, system_id)


def clear_spool(spool: Path) -> None:
    """Forget every segment, refusal and request in ``spool`` (before a restored server's first request)."""
    for sub in ("ready", "error", "inflight"):
        shutil.rmtree(spool / sub, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (spool / "want").unlink()


@dataclass(frozen=True)
class SegmentCheck:
    """What the first page of a segment must say for it to answer ``name``."""

    name: str
    system_id: int | None

    def problem(self, head: bytes) -> str | None:
        """None when ``head`` (the segment's first bytes) fits ``name``, otherwise what is wrong."""
        segment = Segment.parse(self.name)
        if len(head) < _LONG_HEADER.size:
            return "shorter than a WAL page header"
        _magic, info, tli, pageaddr, _rem, sysid, seg_size, _blcksz = _LONG_HEADER.unpack_from(head)
        if not info & XLP_LONG_HEADER:
            return "its first page has no long header (not the start of a segment)"
        if pageaddr != segment.start_lsn:
            return f"its first page is at {pageaddr:#x}, the name says {segment.start_lsn:#x}"
        if not 1 <= tli <= segment.timeline:
            return f"its first page is on timeline {tli}, the name says {segment.timeline}"
        if seg_size != WAL_SEGMENT_SIZE:
            return f"its segment size is {seg_size}, expected {WAL_SEGMENT_SIZE}"
        if self.system_id is not None and sysid != self.system_id:
            return f"it belongs to system {sysid}, this cluster is {self.system_id}"
        return None


def control_system_id(pgdata: Path) -> int | None:
    """The data directory's system identifier (``global/pg_control``), or None when unreadable."""
    try:
        with open(Path(pgdata) / "global" / "pg_control", "rb") as fh:
            raw = fh.read(8)
    except OSError:
        return None
    return struct.unpack("<Q", raw)[0] if len(raw) == 8 else None


def ready_path(spool: Path, name: str) -> Path:
    return spool / "ready" / name


def record_path(spool: Path, name: str) -> Path:
    return spool / "ready" / f"{name}.json"


def digest_path(spool: Path, name: str) -> Path:
    """POSIX ``cksum`` of a ready segment's verified bytes: what ``fast_restore_command``'s shell check reads."""
    return spool / "ready" / f"{name}.cksum"


def posix_cksum(data: bytes) -> str:
    """``cksum``'s ``CRC SIZE`` line for ``data``, computed by coreutils itself over the bytes in memory.

    Why coreutils and not a Python CRC: the shell hand-over compares this with ``cksum < file``, so both sides
    run the same implementation (POSIX CRC-32 with the length appended, pclmul-accelerated: ~4 ms per 16 MiB
    segment against ~36 ms for ``sha256sum``, on replay's critical path). It guards against a change on local
    disk after verification, not an adversary: authenticity was settled by AES-GCM and the archive's SHA-256.
    """
    done = subprocess.run(["cksum"], input=data, capture_output=True, check=True)
    return done.stdout.decode().strip()


def fast_restore_command(spool: Path, fallback: str) -> str:
    """restore_command that hands a prefetched segment over with no interpreter start, else runs ``fallback``.

    Why: a replay asks for segments one at a time and waits for each; a Python start per segment (~0.14 s) was
    half the replay time of 2 GB of WAL, and then ``sha256sum`` (~36 ms per segment) a quarter of what was left.
    The shell path compares ``cksum`` of the file with what the prefetcher computed over the bytes it verified
    (authenticated decryption, the archive's SHA-256, the page header): the file is still what was verified.
    It only moves the file into place (two programs: ``cksum`` and ``mv``; every program start is paid per
    segment on a loaded machine): the prefetcher learns where replay is from the file leaving its spool, and
    prunes the record and digest left beside it. Anything else (not prefetched yet, found unusable: exit 255,
    absent: exit 1) is the fallback's, so the exit-code contract is unchanged. ``%f`` is a WAL file name
    PostgreSQL chose (hex digits, ``.history``), never a path.
    """
    ready = shlex.quote(str(spool / "ready"))
    return (
        f'if [ -f {ready}/%f ] && read -r c < {ready}/%f.cksum && [ "$(cksum < {ready}/%f)" = "$c" ]; then '
        f"mv -f {ready}/%f %p && exit 0; fi; {fallback}"
    )


def relay_socket(spool: Path) -> Path:
    """Where the prefetcher answers the restore_command relay (``fetch_relay``): one socket per spool."""
    return spool / "fetch.sock"


def relay_command(spool: Path, python: Path) -> str:
    """The shell words that ask the prefetcher through ``fetch_relay`` (``%f %p`` included); the fallback
    command's words follow them.

    Why: a request the shell hand-over cannot answer (not prefetched yet, a ``.history`` probe, the end of the
    archive) otherwise starts the whole CLI, an import of boto3 and a Vault login; the relay is an interpreter
    without site-packages that the prefetcher answers with the clients it already holds.
    """
    from cqox_platform.backup.wal import fetch_relay

    words = [str(python), "-I", "-S", fetch_relay.__file__, str(relay_socket(spool))]
    return " ".join(shlex.quote(word) for word in words) + " %f %p"


def error_path(spool: Path, name: str) -> Path:
    return spool / "error" / name


def inflight_path(spool: Path, name: str) -> Path:
    return spool / "inflight" / name


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PrefetchClient:
    """One ``wal-fetch --prefetch`` call: tell the prefetcher where replay is, claim a verified segment."""

    def __init__(self, settings_path: Path, pgdata: Path, bucket: str | None, depth: int = DEFAULT_DEPTH) -> None:
        self.settings_path, self.pgdata, self.bucket, self.depth = settings_path, Path(pgdata), bucket, depth
        self.spool = spool_for(settings_path, self.pgdata, bucket)

    def request(self, name: str) -> None:
        """Say which segment PostgreSQL asks for now (the prefetcher works ahead of it)."""
        write_atomic(self.spool / "want", name)

    def serve(self, name: str, destination: Path) -> int | None:
        """Size written to ``destination`` from the spool, or None (fetch it directly). Raises PrefetchRefused."""
        if not SEGMENT_RE.match(name):
            return None
        deadline = time.monotonic() + INFLIGHT_WAIT
        while inflight_path(self.spool, name).exists() and self._daemon_running():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        error = error_path(self.spool, name)
        if error.exists():
            message = error.read_text(errors="replace").strip()
            raise PrefetchRefused(message or f"the prefetcher found {name} unusable.")
        claimed = self.spool / "ready" / f".{name}.claimed.{os.getpid()}"
        try:
            os.rename(ready_path(self.spool, name), claimed)
        except FileNotFoundError:
            return None
        try:
            return self._hand_over(name, claimed, destination)
        finally:
            claimed.unlink(missing_ok=True)
            record_path(self.spool, name).unlink(missing_ok=True)
            digest_path(self.spool, name).unlink(missing_ok=True)

    def _hand_over(self, name: str, claimed: Path, destination: Path) -> int | None:
        try:
            record = json.loads(record_path(self.spool, name).read_text())
        except (OSError, ValueError):
            return None  # no record: not a file the prefetcher finished; fetch directly
        if record.get("name") != name or record.get("bucket") != (self.bucket or ""):
            return None
        digest = hashlib.sha256()
        with open(claimed, "rb") as fh:
            head = fh.read(1 << 20)
            digest.update(head)
            while block := fh.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != record.get("sha256"):
            return None  # changed on local disk since it was verified: the archive decides, not the spool
        problem = SegmentCheck(name, control_system_id(self.pgdata)).problem(head)
        if problem is not None:
            raise PrefetchRefused(f"{name} from the archive does not answer its name: {problem}.")
        size = claimed.stat().st_size
        _place(claimed, Path(destination))
        return size

    def _daemon_running(self) -> bool:
        try:
            with open(self.spool / "daemon.lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(lock, fcntl.LOCK_UN)
                return False
        except OSError:
            return False

    def ensure_daemon(self, cli: Path) -> None:
        """Start the prefetcher unless one holds the lock (the loser of a race exits at once)."""
        self.spool.mkdir(parents=True, exist_ok=True)
        if self._daemon_running():
            return
        argv = [str(cli), "wal-prefetch-daemon", "--config", str(self.settings_path), "--pgdata", str(self.pgdata)]
        argv += ["--depth", str(self.depth)] + (["--bucket", self.bucket] if self.bucket else [])
        with open(self.spool / "daemon.log", "ab") as log:
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=str(self.pgdata),
            )


def _place(source: Path, destination: Path) -> None:
    """Move ``source`` to ``destination`` atomically (rename, or copy + fsync + rename across filesystems)."""
    try:
        os.replace(source, destination)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another filesystem
            raise CqoxError(f"cannot write {destination}: {exc.strerror or exc}.") from None
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, destination)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CqoxError(f"cannot write {destination}: {exc.strerror or exc}.") from None
