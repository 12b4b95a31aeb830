"""The restore_command's relay: ask the running prefetcher to answer one request, else run the full CLI.

Why it exists: every request the shell hand-over cannot answer (the first segment, a ``.history`` probe, the
end-of-archive probe, the last segment read again at promotion) used to start ``cqox-platform wal-fetch``: an
interpreter, click, boto3 and a Vault login, seconds each on a loaded machine, all on recovery's critical path.
The prefetcher already holds the S3 client and the Vault token, so it answers these over a unix socket in its
spool, with the same code and the same checks as the CLI (``prefetcher.RequestServer``).

This file is run by path with ``python -I -S`` (no site-packages, no project import: ~15 ms), so it may use the
standard library only. The contract is the CLI's: exit 0 (the file is in place), 1 (the archive proved it
absent), 255 (stop recovery). Anything short of a well-formed answer (no prefetcher listening, the connection
dropped, a reply it cannot parse, a timeout) replaces this process with the fallback command line (``exec``),
which decides on its own evidence: the relay never turns a failure into "absent".

    python -I -S fetch_relay.py SOCKET NAME DESTINATION FALLBACK_ARGV...
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time

#: How long the prefetcher may take to answer one request before the CLI is asked instead.
ANSWER_TIMEOUT = 600.0
#: How long to wait for the socket of a prefetcher that is starting (holds its lock, not listening yet).
STARTING_WAIT = 30.0
#: Exit codes the prefetcher may answer with (restore_command's contract); anything else means "ask the CLI".
ANSWERS = {"0": 0, "1": 1, "255": 255}


def _starting(lock_path: str) -> bool:
    """A prefetcher holds the spool's lock: it is running (and will listen soon, if it does not yet)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _connect(conn: socket.socket, socket_path: str) -> None:
    """Connect, waiting while a prefetcher that holds the spool's lock has not opened its socket yet.

    The restore starts the prefetcher just before the server, so the server's first requests may come while it
    is still importing: waiting for it is cheaper than the CLI's own start and Vault login.
    """
    lock_path = os.path.join(os.path.dirname(socket_path), "daemon.lock")
    deadline = time.monotonic() + STARTING_WAIT
    while True:
        try:
            conn.connect(socket_path)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline or not _starting(lock_path):
                raise
            time.sleep(0.02)


def ask(socket_path: str, name: str, destination: str, timeout: float = ANSWER_TIMEOUT) -> tuple[int, str] | None:
    """The prefetcher's (exit code, message) for ``name`` written to ``destination``, or None when it did not
    give a well-formed answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            _connect(conn, socket_path)
            conn.sendall(f"{name}\0{destination}\n".encode())
            conn.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
    except OSError:
        return None
    code, _, message = reply.decode(errors="replace").partition(" ")
    if code not in ANSWERS or not reply.endswith(b"\n"):
        return None
    return ANSWERS[code], message.strip()


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("fetch_relay: usage: SOCKET NAME DESTINATION FALLBACK_ARGV...", file=sys.stderr)
        return 255
    socket_path, name, destination, fallback = argv[0], argv[1], argv[2], argv[3:]
    answer = ask(socket_path, name, os.path.abspath(destination))
    if answer is None:
        try:
            os.execv(fallback[0], fallback)
        except OSError as exc:
            print(
                f"wal-fetch: {name} could not be restored, stopping recovery: cannot run {fallback[0]}: {exc}",
                file=sys.stderr,
            )
            return 255
    code, message = answer
    if message:
        print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except Exception as exc:  # exit 1 would read as "absent" and end recovery early: stop it instead
        print(f"wal-fetch: the relay failed, stopping recovery: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 255
    sys.exit(status)
