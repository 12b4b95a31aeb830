"""What every repository engine answers for the verdicts: its backups with their WAL ranges, its archived WAL,
a backup restored into a directory, and a ``restore_command`` that fetches WAL from it.

The engines drive their own tools (``barman-cloud-*``, ``pgbackrest``) and never parse their storage formats:
only object *names* are read where no tool lists them (Barman Cloud has no WAL-listing command).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from cqox_platform.errors import BackupError

Engine = Literal["cqox", "barman-cloud", "pgbackrest"]


class RepositoryError(BackupError):
    """A repository's own tool failed or answered something unexpected; the message names the repository,
    the command and its output (never a credential)."""


@dataclass(frozen=True)
class RepositoryBackup:
    """One base backup as its engine lists it: where its WAL starts and ends, and when it finished."""

    backup_id: str
    timeline: int
    begin_wal: str
    end_wal: str
    begin_lsn: str
    end_time: datetime

    @property
    def start_lsn(self) -> str:
        """Where a restore of it starts replaying (the name the platform's own backup records use)."""
        return self.begin_lsn


class Repository(Protocol):
    """The few operations the platform's verdicts need from a backup repository."""

    name: str
    engine: Engine
    #: The engine keeps PostgreSQL's ``backup_manifest`` (pg_verifybackup can check a restore against it).
    has_backup_manifest: bool

    @property
    def where(self) -> str:
        """Where the repository lives, for messages (a URL or a stanza; never a credential)."""
        ...

    def list_backups(self) -> list[RepositoryBackup]:
        """Completed backups, oldest first."""
        ...

    def archived_wal(self) -> dict[str, datetime]:
        """Archived WAL file name (segment or ``.history``) -> when the repository stored it."""
        ...

    def restore(self, backup_id: str, pgdata: Path, workdir: Path) -> None:
        """Restore ``backup_id``'s files into ``pgdata`` (empty, owned by postgres afterwards)."""
        ...

    def verify_restored(self, backup_id: str, pgdata: Path, workdir: Path) -> str | None:
        """The engine's own integrity check of what it stored, or None when it has none; raises on failure."""
        ...

    def read_history(self, name: str) -> str:
        """The text of timeline history file ``name``, fetched by the engine's own tool."""
        ...

    def restore_command(self, workdir: Path, pgdata: Path) -> str:
        """PostgreSQL's ``restore_command`` (``%f`` ``%p``) fetching from this repository, run as postgres."""
        ...


def run_tool(argv: list[str], *, repository: str, env: dict[str, str] | None = None, timeout: float = 3600) -> str:
    """Run an engine's tool; its stdout, or a ``RepositoryError`` naming the repository and the tool's output."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env, timeout=timeout)
    except FileNotFoundError:
        raise RepositoryError(
            f"repository {repository}: {argv[0]} is not installed (scripts/bootstrap.sh installs barman-cli-cloud "
            "and pgbackrest)."
        ) from None
    except subprocess.TimeoutExpired:
        raise RepositoryError(f"repository {repository}: {_tool(argv)} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        out = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise RepositoryError(f"repository {repository}: {_tool(argv)} exited {proc.returncode}: {out}")
    return proc.stdout


def _tool(argv: list[str]) -> str:
    """The tool and its subcommand, without paths or options that could carry a secret."""
    names = [a for a in argv if not a.startswith("-") and "/" not in a and "=" not in a]
    return " ".join(names[:2]) if names else argv[0]
