"""The faults an alert drill injects, each safe and reversible, and their undo (idempotent, journal-driven).

Every ``inject_*`` records its journal entry first (see ``journal``), then changes one thing:

- ``stale_push``: pushes a drill-only group that declares a short push period, then never pushes it again; undo
  deletes the group. Nothing real goes stale.
- ``slo_burn``: the synthetic traffic exporter's canary answers every request with a 5xx; undo restores the
  canary's previous settings.
- ``archiving``: the archiver settings file's S3 endpoint points at a closed local port, so ``wal-push`` fails
  and PostgreSQL keeps the WAL (it retries until archiving works again: no segment is lost); undo puts the
  original endpoint back. Only the endpoint is journalled, never the file (it holds the archiver's secret id).
- ``replica_paused``: SIGSTOP on a replica's startup (WAL replay) process; undo sends SIGCONT, after checking
  the pid still is that process (its start time), so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from cqox_platform.alerts.drill.journal import FaultJournal, Undo
from cqox_platform.errors import AlertingError
from cqox_platform.pushgateway import Pushgateway, delete_group, expected_period_sample, push

DRILL_PUSH_JOB = "cqox-alert-drill"
#: The period the drill's pushed group declares: short, so its staleness shows within a minute.
DRILL_PUSH_PERIOD_SECONDS = 10
DRILL_PUSH_SEVERITY = "ticket"
#: Nothing listens here (port 9, discard, is closed on the hosts the drill runs on): connections are refused at
#: once, so wal-push fails fast instead of hanging on a timeout.
UNREACHABLE_S3 = "https://127.0.0.1:9"
CANARY = "canary"


class DrillFaultError(AlertingError):
    """A fault could not be injected or undone."""


def _inject(journal: FaultJournal, fault: str, undo: dict[str, Any], action: Callable[[], object]) -> str:
    """Journal first, then the change; a change that fails half-way is undone (and cleared) before raising."""
    entry = journal.record(fault, undo)
    try:
        action()
    except BaseException:
        with contextlib.suppress(Exception):
            UNDOERS[fault](undo)
            journal.clear(entry)
        raise
    return entry


# --- stale_push ----------------------------------------------------------------------------------------------


def inject_stale_push(journal: FaultJournal, gateway: Pushgateway, service: str) -> str:
    grouping = {"service": service}
    # The gateway by URL, user and file paths (no password), so a later `stack up` can delete the group.
    entry = journal.record(
        "stale_push", {"pushgateway": gateway.as_dict(), "job": DRILL_PUSH_JOB, "grouping": grouping}
    )
    samples = [
        ("cqox_alert_drill_probe", {}, 1.0),
        expected_period_sample(DRILL_PUSH_PERIOD_SECONDS, DRILL_PUSH_SEVERITY),
    ]
    push(gateway, DRILL_PUSH_JOB, grouping, samples, replace=True)
    return entry


def undo_stale_push(undo: dict[str, Any]) -> None:
    if "pushgateway" in undo:
        gateway = Pushgateway.from_dict(undo["pushgateway"])
    else:  # an entry journaled before the Pushgateway required credentials: the URL alone
        gateway = Pushgateway(url=undo["pushgateway_url"])
    delete_group(gateway, undo["job"], undo["grouping"])


# --- slo_burn ------------------------------------------------------------------------------------------------


def traffic_settings(traffic_url: str) -> dict[str, dict]:
    try:
        response = requests.get(f"{traffic_url.rstrip('/')}/config", timeout=10)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise DrillFaultError(f"traffic exporter at {traffic_url} is unreachable or refused: {exc}") from None
    return response.json()


def _put_traffic(traffic_url: str, changes: dict[str, dict]) -> dict[str, dict]:
    try:
        response = requests.put(f"{traffic_url.rstrip('/')}/config", json=changes, timeout=10)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise DrillFaultError(f"traffic exporter at {traffic_url} refused new settings: {exc}") from None
    return response.json()


def inject_slo_burn(journal: FaultJournal, traffic_url: str) -> str:
    previous = traffic_settings(traffic_url).get(CANARY)
    if previous is None:
        raise DrillFaultError(f"the traffic exporter at {traffic_url} has no {CANARY} version to fail")
    undo = {"traffic_url": traffic_url, "version": CANARY, "previous": previous}
    return _inject(journal, "slo_burn", undo, lambda: _put_traffic(traffic_url, {CANARY: {"error_ratio": 1.0}}))


def undo_slo_burn(undo: dict[str, Any]) -> None:
    _put_traffic(undo["traffic_url"], {undo["version"]: undo["previous"]})


# --- archiving -----------------------------------------------------------------------------------------------


def _rewrite_endpoint(settings_file: Path, endpoint: str) -> str:
    """Set the archiver settings' ``s3_endpoint``, keeping owner and mode; returns the endpoint it replaced."""
    stat = settings_file.stat()
    data = json.loads(settings_file.read_text())
    before = data["s3_endpoint"]
    if before == endpoint:
        return before
    data["s3_endpoint"] = endpoint
    fd, tmp = tempfile.mkstemp(prefix=f".{settings_file.name}.", dir=settings_file.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chown(tmp, stat.st_uid, stat.st_gid)
    os.chmod(tmp, stat.st_mode & 0o777)
    os.replace(tmp, settings_file)
    return before


def inject_archiving(journal: FaultJournal, settings_file: Path) -> str:
    original = json.loads(Path(settings_file).read_text())["s3_endpoint"]
    if original == UNREACHABLE_S3:
        raise DrillFaultError(f"{settings_file} already points at {UNREACHABLE_S3}: an earlier drill's fault?")
    undo = {"settings_file": str(settings_file), "s3_endpoint": original}
    return _inject(journal, "archiving", undo, lambda: _rewrite_endpoint(Path(settings_file), UNREACHABLE_S3))


def undo_archiving(undo: dict[str, Any]) -> None:
    _rewrite_endpoint(Path(undo["settings_file"]), undo["s3_endpoint"])


def archiver_endpoint(settings_file: Path) -> str:
    return json.loads(Path(settings_file).read_text())["s3_endpoint"]


# --- replica_paused ------------------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): identifies a process beyond its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_state(pid: int) -> str | None:
    """Field 3 of /proc/<pid>/stat: ``T`` while stopped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def inject_replica_paused(journal: FaultJournal, pid: int) -> str:
    started = _start_time(pid)
    if started is None:
        raise DrillFaultError(f"process {pid} (the replica's startup process) is not on this host")
    undo = {"pid": pid, "start_time": started}
    return _inject(journal, "replica_paused", undo, lambda: os.kill(pid, signal.SIGSTOP))


def undo_replica_paused(undo: dict[str, Any]) -> None:
    pid = int(undo["pid"])
    if _start_time(pid) != undo["start_time"]:
        return  # gone (the replica restarted): nothing is stopped any more
    os.kill(pid, signal.SIGCONT)


UNDOERS: dict[str, Undo] = {
    "stale_push": undo_stale_push,
    "slo_burn": undo_slo_burn,
    "archiving": undo_archiving,
    "replica_paused": undo_replica_paused,
}


def undo_entry(journal: FaultJournal, entry_id: str) -> None:
    """Undo one of this drill's faults now and clear it; on failure it stays for ``recover``."""
    entry = journal.pending().get(entry_id)
    if entry is None:
        return
    UNDOERS[entry["fault"]](entry["undo"])
    journal.clear(entry_id)
