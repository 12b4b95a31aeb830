"""The alert drill's journal of injected faults: written before a fault is injected, cleared once it is undone.

A drill that fails, is cancelled or is killed (SIGKILL leaves no ``finally``) must not leave archiving pointed
at a dead endpoint or a replica stopped. Each fault is therefore recorded, with everything needed to undo it
and nothing secret, before it is injected; the drill undoes its faults in ``finally``; and whatever an earlier
drill left behind is undone at the start of the next drill and by every ``stack up`` (``recover``). Undoing is
idempotent, so an entry whose fault was never injected (killed between the write and the injection) is safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

JOURNAL_NAME = "alert-drill-faults.json"
_LOCK = threading.Lock()


def journal_path(stack_dir: Path) -> Path:
    """Under the stack's ``run`` directory: where both the drill and ``stack up`` look."""
    return Path(stack_dir) / "run" / JOURNAL_NAME


class FaultJournal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The entries, under a thread lock and a file lock; what the block leaves in the dict is written back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK, open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = json.loads(self.path.read_text()) if self.path.exists() else {}
            yield entries
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump(entries, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the fault exists
            os.replace(tmp, self.path)

    def record(self, fault: str, undo: dict[str, Any]) -> str:
        entry_id = uuid.uuid4().hex[:12]
        with self._locked() as entries:
            entries[entry_id] = {"fault": fault, "undo": undo, "recorded_at": time.time(), "pid": os.getpid()}
        return entry_id

    def clear(self, entry_id: str) -> None:
        with self._locked() as entries:
            entries.pop(entry_id, None)

    def pending(self) -> dict[str, dict[str, Any]]:
        with self._locked() as entries:
            return dict(entries)


Undo = Callable[[dict[str, Any]], None]


def recover(journal: FaultJournal, undoers: dict[str, Undo]) -> list[str]:
    """Undo every fault still in the journal; returns one line per entry. An entry whose undo fails stays, so
    the next drill or ``stack up`` tries again, and its line says what failed."""
    lines = []
    for entry_id, entry in journal.pending().items():
        undo = undoers.get(entry["fault"])
        if undo is None:
            lines.append(f"fault {entry_id} ({entry['fault']}): no undo known to this version; left in {journal.path}")
            continue
        try:
            undo(entry["undo"])
        except Exception as exc:  # every failure is reported; the entry is kept for the next try
            lines.append(f"fault {entry_id} ({entry['fault']}) NOT undone: {exc}; retried at the next drill/stack up")
            continue
        journal.clear(entry_id)
        lines.append(f"fault {entry_id} ({entry['fault']}) left by drill process {entry.get('pid')} undone")
    return lines
