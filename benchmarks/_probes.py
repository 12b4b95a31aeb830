"""Background samplers for the backup benchmark: peak RSS of a set of processes, peak disk used by a restore.

Both read ``/proc`` and the file system directly (no dependency), as threads that sample until stopped, so a
figure wraps the command it times in ``with watch:`` and reads the peak afterwards.

Which processes count: a tree (the command the benchmark started and its descendants) and, because pushers
and prefetchers may detach from the process that started them, any process whose command line names a
marker path or whose working directory is under it (PostgreSQL runs ``archive_command`` and
``restore_command`` in its data directory). PostgreSQL's own processes never count.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: str) -> tuple[str, int, int, str] | None:
    """(comm, ppid, rss bytes, start time) from /proc/PID/stat, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()
    return comm, int(rest[1]), int(rest[21]) * PAGE, rest[19]


def _hwm(pid: str) -> int:
    """The process's own peak RSS so far (VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _names_marker(pid: str, marker: str) -> bool:
    try:
        if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return True
        return os.readlink(f"/proc/{pid}/cwd").startswith(marker)
    except OSError:
        return False


class _Sampling:
    """Calls ``_sample`` every ``interval`` seconds in a thread while the ``with`` block runs, and once at its end."""

    interval: float

    def _sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


@dataclass
class ProcessWatch(_Sampling):
    """Peak summed RSS and peak single-process RSS of the processes selected (see the module docstring)."""

    root_pid: int | None = None
    marker: str | None = None
    #: False: the tree of ``root_pid`` is left out (the restore command while its server's wal-fetch counts).
    count_tree: bool = True
    interval: float = 0.2
    peak_total: int = 0
    peak_single: int = 0
    peak_name: str = ""
    _members: dict[tuple[str, str, str], bool] = field(default_factory=dict)
    _tree: set[int] = field(default_factory=set)

    def _selected(self, pid: str, comm: str, ppid: int, started: str) -> bool:
        key = (pid, started, comm)  # comm changes on exec: a forked postgres child may become a command
        if key not in self._members:
            in_tree = self.root_pid is not None and (int(pid) == self.root_pid or ppid in self._tree)
            if in_tree and comm != "postgres":
                self._tree.add(int(pid))
            # A process the command started that names the marker counts even when its tree does not: the WAL
            # prefetcher a restore starts before its server is the restore's child, and serves the server.
            marked = int(pid) != self.root_pid and self.marker is not None and _names_marker(pid, self.marker)
            self._members[key] = comm != "postgres" and ((in_tree and self.count_tree) or marked)
        return self._members[key]

    def _sample(self) -> None:
        total = 0
        for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
            info = _stat(pid)
            if info is None or not self._selected(pid, info[0], info[1], info[3]):
                continue
            total += info[2]
            hwm = _hwm(pid)
            if hwm > self.peak_single:
                self.peak_single, self.peak_name = hwm, info[0]
        self.peak_total = max(self.peak_total, total)

    def describe(self) -> str:
        return f"peak {self.peak_total / 2**20:.0f} MiB summed, {self.peak_single / 2**20:.0f} MiB largest"


def du_bytes(root: Path, *, own_only: bool = False) -> int:
    """Allocated bytes under ``root`` (like ``du -s``), tolerant of files vanishing while it walks.

    ``own_only``: each inode once, and only files no other directory links to (``st_nlink`` 1). A spool that
    marks a WAL segment with a hard link to it costs no disk while ``pg_wal`` holds the same inode, but does once
    the server removed its name; counting every name would charge the segment twice.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(root, onerror=lambda _e: None):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if own_only:
                    if st.st_nlink > 1 or (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def fs_used(path: Path) -> int:
    """Used bytes of the file system holding ``path`` (or its nearest existing parent: a spool may not exist yet)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@dataclass
class DiskWatch(_Sampling):
    """Peak bytes under ``root`` (du) and peak growth of its file system (statvfs) while the block runs.

    ``du`` sees only ``root`` and is exact on a shared machine; ``statvfs`` also sees staging files written
    elsewhere, but counts whatever else writes to the same file system at the time. ``peak_growth`` is the peak
    du over the du at the start: the scratch space an operation added to a directory that already held files.
    ``own_only`` is passed to ``du_bytes`` (a spool of hard-linked markers).
    """

    root: Path
    interval: float = 0.5
    own_only: bool = False
    peak_du: int = 0
    peak_fs_growth: int = 0
    start_du: int = 0
    _fs_start: int = 0

    def __enter__(self) -> DiskWatch:
        self._fs_start = fs_used(self.root)
        self.start_du = du_bytes(self.root, own_only=self.own_only)
        return super().__enter__()

    @property
    def peak_growth(self) -> int:
        return max(self.peak_du - self.start_du, 0)

    def _sample(self) -> None:
        self.peak_du = max(self.peak_du, du_bytes(self.root, own_only=self.own_only))
        self.peak_fs_growth = max(self.peak_fs_growth, fs_used(self.root) - self._fs_start)


def _pss(pid: str) -> int:
    """The process's proportional set size (shared pages split among their users), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class ServerWatch(_Sampling):
    """Peak memory of a PostgreSQL server, the processes named ``postgres`` whose working directory (or command
    line) is under ``marker``: summed PSS, so its shared buffers count once, as a pod's memory cgroup charges them.
    """

    marker: str
    interval: float = 0.5
    peak_total: int = 0

    def _sample(self) -> None:
        total = 0
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            info = _stat(pid)
            if info is not None and info[0] == "postgres" and _names_marker(pid, self.marker):
                total += _pss(pid)
        self.peak_total = max(self.peak_total, total)
