"""What the observer hands the isolated recovery: coordinates, file paths and facts, never a credential.

The plan is written to a 0600 file; it names the DR reader's credentials file and the unseal key file (the only
two secrets the recovery may use) by path, so neither ever travels in the plan, an argument or the event log.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cqox_platform.backup.verify.proof import RestorePoint
from cqox_platform.errors import CqoxError


class SiteLossPlanError(CqoxError):
    """The plan file is missing or not a site-loss drill's plan."""


@dataclass(frozen=True)
class PrimaryPosition:
    """Where the primary was when the drill started: what a site lost at that instant would have held."""

    lsn: str
    timeline: int
    observed_at: datetime
    #: The newest commit's time when ``track_commit_timestamp`` is on; else ``None`` (the RPO in time is then
    #: measured from ``observed_at``, an upper bound when the primary was idle).
    last_commit_at: datetime | None = None


@dataclass(frozen=True)
class SiteLossPlan:
    dr_endpoint: str
    dr_cacert: str
    dr_bucket: str
    dr_reader_credentials_file: str
    unseal_key_file: str
    system_id: str
    transit_key: str
    archiver_role: str
    cli: str
    workdir: str
    primary: PrimaryPosition
    point: RestorePoint
    keep_scratch: bool = False
    #: Seconds recovery may take to reach the point, and again to the end of the DR copy's WAL.
    replay_timeout: float = 3600

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_encode, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> SiteLossPlan:
        try:
            raw: dict[str, Any] = json.loads(text)
            primary = raw.pop("primary")
            point = raw.pop("point")
            return cls(
                **raw,
                primary=PrimaryPosition(
                    lsn=primary["lsn"],
                    timeline=int(primary["timeline"]),
                    observed_at=datetime.fromisoformat(primary["observed_at"]),
                    last_commit_at=datetime.fromisoformat(primary["last_commit_at"])
                    if primary.get("last_commit_at")
                    else None,
                ),
                point=RestorePoint(**{**point, "created_at": datetime.fromisoformat(point["created_at"])}),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SiteLossPlanError(f"{where} is not a site-loss drill plan ({type(exc).__name__}: {exc}).") from None

    @classmethod
    def load(cls, path: Path) -> SiteLossPlan:
        try:
            return cls.from_json(path.read_text(), str(path))
        except OSError as exc:
            raise SiteLossPlanError(f"cannot read the site-loss drill plan {path}: {exc.strerror}.") from None


def _encode(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
