"""Files root writes where a less privileged user (``postgres``) can plant names: never through a symlink.

The stack and ``restore`` run as root and write, chmod and chown files in directories the ``postgres`` OS user
owns (its data directory, the archiver's settings, socket directories). A path-based ``write_text`` or
``chown`` there follows whatever that user put under the name (``archiver.json -> /etc/shadow``), so root would
overwrite or hand over a file of its own. Every such operation goes through this module instead:

- the target directory is opened component by component with ``O_NOFOLLOW``; a symlink is followed only where
  nobody but root could have placed it (a root-owned directory no one else may write);
- a file is written to a fresh temporary name inside that directory (``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to
  the directory's descriptor), given its mode and owner through the descriptor (``fchmod``/``fchown``), synced,
  and renamed over the target within the same directory: a planted symlink is replaced, never followed;
- a target that exists and is neither a regular file nor a symlink (a directory, FIFO, socket, device) is
  refused, as is chmod/chown of anything that is not what the caller expects.

Plain standard library: the core, the stack and the CLI share it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import secrets
import stat
from pathlib import Path

from cqox_platform.errors import CqoxError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40


class UnsafePathError(CqoxError):
    """A path another user controls would have made root write, chmod or chown somewhere else."""


def _trusted(dir_fd: int) -> bool:
    """Only root can have put a symlink here: a root-owned directory not writable by group or others."""
    st = os.fstat(dir_fd)
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def open_dir(path: Path | str) -> int:
    """A descriptor of directory ``path``, reached without following any symlink another user could plant."""
    where = os.path.abspath(path)
    parts = [p for p in where.split("/") if p]
    fd = os.open("/", _DIR_FLAGS)
    hops = 0
    try:
        while parts:
            part = parts.pop(0)
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise UnsafePathError(f"{where}: {part} is not a directory.") from None
                if not _trusted(fd) or hops >= _MAX_LINKS:
                    raise UnsafePathError(
                        f"refusing {where}: {part} is a symlink in a directory other users can write; "
                        f"use the real path."
                    ) from None
                hops += 1
                target = os.readlink(part, dir_fd=fd)
                parts = [p for p in target.split("/") if p] + parts
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                continue
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _ids(owner: str | None) -> tuple[int, int] | None:
    if owner is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(owner)
    return entry.pw_uid, entry.pw_gid


def write_file(path: Path | str, content: str | bytes, *, mode: int = 0o600, owner: str | None = None) -> None:
    """Replace ``path`` atomically with ``content``, ``mode`` and (as root) ``owner``; never through a link."""
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
    dir_fd = open_dir(path.parent)
    try:
        try:
            st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise UnsafePathError(f"refusing to replace {path}: it is not a regular file.")
        except FileNotFoundError:
            pass
        tmp = f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), mode)
                ids = _ids(owner)
                if ids is not None:
                    os.fchown(fh.fileno(), *ids)
                os.fsync(fh.fileno())
            os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path`` readable by the owner only (0600), created that way, never widened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, content, mode=0o600)


def read_file(path: Path | str) -> bytes:
    """The bytes of regular file ``path``, refusing a symlink or anything else in its place."""
    path = Path(path)
    dir_fd = open_dir(path.parent)
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"refusing to read {path}: it is a symlink.") from None
        raise
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UnsafePathError(f"refusing to read {path}: it is not a regular file.")
        return fh.read()


def own(path: Path | str, *, mode: int | None = None, owner: str | None = None, directory: bool = False) -> None:
    """chmod/chown ``path`` through a descriptor opened without following links; it must be a file or dir."""
    path = Path(path)
    flags = _DIR_FLAGS if directory else os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    dir_fd = open_dir(path.parent)
    try:
        fd = os.open(path.name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "directory" if directory else "regular file"
            raise UnsafePathError(f"refusing to change {path}: it is not a {kind} (a symlink?).") from None
        raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
            raise UnsafePathError(f"refusing to change {path}: it is not a {'directory' if directory else 'file'}.")
        if mode is not None:
            os.fchmod(fd, mode)
        ids = _ids(owner)
        if ids is not None:
            os.fchown(fd, *ids)
    finally:
        os.close(fd)


def own_tree(root: Path | str, owner: str) -> None:
    """Give every entry under ``root`` to ``owner`` without following a link (links themselves are lchown'd)."""
    ids = _ids(owner)
    if ids is None:
        return
    own(root, owner=owner, directory=True)
    for _dirpath, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in dirnames + filenames:
            os.chown(name, *ids, dir_fd=dir_fd, follow_symlinks=False)


def make_dir(path: Path | str, *, mode: int = 0o700, owner: str | None = None) -> Path:
    """``mkdir -p`` then give the last directory ``mode`` and ``owner``; refuses a symlink in its place."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    own(path, mode=mode, owner=owner, directory=True)
    return path


def single_instance_lock(path: Path):
    """``path`` opened and locked exclusively without waiting, or None when another process holds it.

    The background WAL pusher and prefetcher each run once per spool: the loser of a start race exits at once.
    Keep the returned file open for as long as the lock must be held (closing it releases the lock).
    """
    lock = open(path, "a")  # noqa: SIM115 - the caller holds it for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
