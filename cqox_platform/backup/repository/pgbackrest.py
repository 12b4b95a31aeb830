"""A ``pgbackrest`` repository: one stanza, driven by pgBackRest's own commands, run as the postgres OS user.

``info --output=json`` lists backups with their WAL ranges, ``repo-ls --recurse`` the archived WAL,
``restore --set`` restores one (its own file checksums are checked as it writes them), ``verify`` checks the whole
repository's checksums, and ``archive-get`` is the ``restore_command``. pgBackRest keeps its own manifest, not
PostgreSQL's ``backup_manifest``, so pg_verifybackup has nothing to check a restore against; ``verify`` stands in.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cqox_platform.backup.repository.base import RepositoryBackup, RepositoryError, run_tool
from cqox_platform.pgserver import as_pg_user, chown_tree
from cqox_platform.settings import child_env

#: A segment as pgBackRest stores it (``<name>-<sha1>[.<compression>]``) or a timeline history file.
ARCHIVED_RE = re.compile(r"^(?:([0-9A-F]{24})-[0-9a-f]{40}(?:\.\w+)?|([0-9A-F]{8}\.history)(?:\.\w+)?)$")


@dataclass(frozen=True)
class PgBackRestRepository:
    name: str
    config: Path
    stanza: str
    engine: str = "pgbackrest"
    has_backup_manifest: bool = False

    @property
    def where(self) -> str:
        return f"pgBackRest stanza {self.stanza} ({self.config})"

    def _argv(self, *args: str) -> list[str]:
        return as_pg_user(["pgbackrest", f"--config={self.config}", f"--stanza={self.stanza}", *args])

    def _run(self, *args: str, timeout: float = 3600) -> str:
        env = child_env(drop_prefixes=("AWS_", "PG", "PGBACKREST_"))
        return run_tool(self._argv(*args), repository=self.name, env=env, timeout=timeout)

    def list_backups(self) -> list[RepositoryBackup]:
        out = self._run("--output=json", "info")
        try:
            stanzas = json.loads(out)
            stanza = next(s for s in stanzas if s["name"] == self.stanza)
            backups = [
                RepositoryBackup(
                    backup_id=b["label"],
                    timeline=int(b["archive"]["start"][:8], 16),
                    begin_wal=b["archive"]["start"],
                    end_wal=b["archive"]["stop"],
                    begin_lsn=b["lsn"]["start"],
                    end_time=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
                )
                for b in stanza.get("backup", [])
                if not b.get("error")
            ]
        except (ValueError, KeyError, TypeError, StopIteration) as exc:
            raise RepositoryError(f"repository {self.name}: pgbackrest info answered {out[:300]!r}: {exc!r}") from None
        return sorted(backups, key=lambda b: b.end_time)

    def archived_wal(self) -> dict[str, datetime]:
        out = self._run("--output=json", "--recurse", "repo-ls", f"archive/{self.stanza}")
        try:
            listed = json.loads(out)
        except ValueError as exc:
            raise RepositoryError(f"repository {self.name}: pgbackrest repo-ls answered {out[:300]!r}: {exc}") from None
        found: dict[str, datetime] = {}
        for path, entry in listed.items():
            if entry.get("type") != "file":
                continue
            match = ARCHIVED_RE.match(path.rsplit("/", 1)[-1])
            if match:
                found[match.group(1) or match.group(2)] = datetime.fromtimestamp(entry.get("time", 0), UTC)
        return found

    def restore(self, backup_id: str, pgdata: Path, workdir: Path) -> None:
        chown_tree(pgdata)
        # --type=none: pgBackRest writes no recovery target of its own; the drill's configuration sets one.
        self._run(f"--pg1-path={pgdata}", f"--set={backup_id}", "--type=none", "restore")

    def verify_restored(self, backup_id: str, pgdata: Path, workdir: Path) -> str | None:
        out = self._run("--output=text", "verify")
        return f"pgbackrest verify: {' '.join(out.split())[:300] or 'no errors'}"

    def read_history(self, name: str) -> str:
        with tempfile.TemporaryDirectory(prefix="cqox-history-") as tmp:
            Path(tmp).chmod(0o777)
            target = Path(tmp) / name
            self._run("archive-get", name, str(target))
            return target.read_text()

    def restore_command(self, workdir: Path, pgdata: Path) -> str:
        return (
            f"pgbackrest --config={shlex.quote(str(self.config))} --stanza={shlex.quote(self.stanza)} "
            f'--pg1-path={shlex.quote(str(pgdata))} archive-get %f "%p"'
        )
