"""The health verdicts on a Patroni cluster, computed from what was observed (pure: no I/O, no Dagster).

Two views are combined on purpose. Patroni's ``GET /cluster`` says who holds the leader key and what each
member's agent believes; the leader's ``pg_stat_replication`` says which replicas are really connected,
streaming and how many bytes of WAL each has not replayed yet. A replica whose Patroni agent says ``running``
but which is not in the leader's ``pg_stat_replication`` is not protecting anything, so the checks trust the
server for replication and Patroni for roles. The ``postgres`` endpoint (HAProxy) is part of the verdict on
the leader: a cluster with one leader that clients cannot reach is not healthy either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cqox_platform.ha.patroni_client import ClusterState, Member

#: Default bound of ``replication_lag_within_bound`` (Patroni's ``maximum_lag_on_failover`` of the stack).
DEFAULT_MAX_LAG_BYTES = 16 * 1024 * 1024

#: Patroni states of a member whose PostgreSQL is up (3.0 says ``running`` for replicas; newer, ``streaming``).
UP_STATES = ("running", "streaming")

CHECK_NAMES = (
    "exactly_one_leader",
    "replicas_streaming",
    "replication_lag_within_bound",
    "sync_standby_present_when_sync_mode",
)


@dataclass(frozen=True)
class ReplicationRow:
    """One row of the leader's ``pg_stat_replication`` (``application_name`` is the Patroni member name)."""

    name: str
    state: str
    sync_state: str
    #: ``pg_current_wal_lsn() - replay_lsn``; None while the standby has not reported a replay position.
    replay_lag_bytes: int | None
    flush_lag_bytes: int | None = None
    replay_lag_seconds: float | None = None


@dataclass(frozen=True)
class Endpoint:
    """The server the ``postgres`` endpoint (HAProxy) reached: its port and whether it is in recovery."""

    port: int
    in_recovery: bool


@dataclass(frozen=True)
class Observation:
    cluster: ClusterState
    sync_mode: bool
    endpoint: Endpoint | None
    replication: list[ReplicationRow] = field(default_factory=list)

    def row(self, name: str) -> ReplicationRow | None:
        return next((r for r in self.replication if r.name == name), None)

    @property
    def sync_standbys(self) -> list[str]:
        """Members Patroni made synchronous that the leader also reports as ``sync``."""
        sync_rows = {r.name for r in self.replication if r.sync_state == "sync"}
        return [m.name for m in self.cluster.members if m.role == "sync_standby" and m.name in sync_rows]


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _replicas(obs: Observation) -> list[Member]:
    return obs.cluster.replicas


def exactly_one_leader(obs: Observation) -> CheckOutcome:
    """One member holds the leader key, and the ``postgres`` endpoint reaches that very server, writable."""
    leaders = obs.cluster.leaders
    meta: dict[str, Any] = {"leaders": len(leaders)}
    if len(leaders) != 1:
        names = ", ".join(m.name for m in leaders) or "none"
        return CheckOutcome("exactly_one_leader", False, f"{len(leaders)} leaders ({names}); expected exactly 1", meta)
    leader = leaders[0]
    if obs.endpoint is None:
        return CheckOutcome("exactly_one_leader", True, f"{leader.name} leads (endpoint not observed)", meta)
    meta["endpoint_port"] = obs.endpoint.port
    if obs.endpoint.in_recovery:
        return CheckOutcome(
            "exactly_one_leader",
            False,
            f"{leader.name} holds the leader key, but the postgres endpoint reached a server in recovery "
            f"(port {obs.endpoint.port}): writes would fail",
            meta,
        )
    if leader.port is not None and obs.endpoint.port != leader.port:
        return CheckOutcome(
            "exactly_one_leader",
            False,
            f"{leader.name} holds the leader key on port {leader.port}, but the postgres endpoint reached a "
            f"writable server on port {obs.endpoint.port}: two writable servers",
            meta,
        )
    return CheckOutcome(
        "exactly_one_leader",
        True,
        f"{leader.name} leads timeline {leader.timeline} and the postgres endpoint reaches it",
        meta,
    )


def replicas_streaming(obs: Observation, expected_members: int) -> CheckOutcome:
    """Every member but the leader streams from it, and no member is missing from Patroni's list."""
    members = obs.cluster.members
    problems = []
    if len(members) < expected_members:
        problems.append(f"only {len(members)} of {expected_members} members registered in Patroni")
    if len(obs.cluster.leaders) != 1:
        problems.append("no single leader to stream from")
    streaming = []
    for member in _replicas(obs):
        row = obs.row(member.name)
        if row is None:
            problems.append(f"{member.name} is not connected to the leader (Patroni: {member.state})")
        elif row.state != "streaming":
            problems.append(f"{member.name} is {row.state}, not streaming")
        else:
            streaming.append(member.name)
    if not _replicas(obs) and expected_members > 1:
        problems.append("the cluster has no replica")
    meta = {"streaming": len(streaming), "replicas": len(_replicas(obs)), "expected_members": expected_members}
    if problems:
        return CheckOutcome("replicas_streaming", False, "; ".join(problems), meta)
    return CheckOutcome("replicas_streaming", True, f"{', '.join(streaming)} streaming from the leader", meta)


def replication_lag_within_bound(obs: Observation, max_lag_bytes: int) -> CheckOutcome:
    """Every replica's replay position within ``max_lag_bytes`` of the leader's WAL; unknown lag fails."""
    lags: dict[str, int | None] = {}
    for member in _replicas(obs):
        row = obs.row(member.name)
        lags[member.name] = row.replay_lag_bytes if row else None
    known = [v for v in lags.values() if v is not None]
    over = {n: v for n, v in lags.items() if v is not None and v > max_lag_bytes}
    unknown = [n for n, v in lags.items() if v is None]
    meta = {"max_lag_bytes": max(known, default=0), "bound_bytes": max_lag_bytes}
    problems = [f"{n} is {v} bytes behind" for n, v in over.items()]
    problems += [f"{n}'s lag is unknown (not streaming)" for n in unknown]
    if not lags:
        problems.append("no replica to measure")
    if problems:
        return CheckOutcome(
            "replication_lag_within_bound", False, "; ".join(problems) + f" (bound {max_lag_bytes} bytes)", meta
        )
    return CheckOutcome(
        "replication_lag_within_bound",
        True,
        f"largest replay lag {max(known)} bytes, within {max_lag_bytes} bytes",
        meta,
    )


def sync_standby_present_when_sync_mode(obs: Observation) -> CheckOutcome:
    """In synchronous mode a commit waits for a standby, so one must be both Patroni's and the server's sync."""
    if not obs.sync_mode:
        return CheckOutcome(
            "sync_standby_present_when_sync_mode",
            True,
            "synchronous_mode is off: replication is asynchronous and no synchronous standby is required",
            {"sync_mode": False},
        )
    standbys = obs.sync_standbys
    meta = {"sync_mode": True, "sync_standbys": len(standbys)}
    if standbys:
        return CheckOutcome(
            "sync_standby_present_when_sync_mode",
            True,
            f"synchronous_mode is on; {', '.join(standbys)} is the synchronous standby",
            meta,
        )
    patroni_sync = [m.name for m in obs.cluster.members if m.role == "sync_standby"]
    server_sync = [r.name for r in obs.replication if r.sync_state == "sync"]
    return CheckOutcome(
        "sync_standby_present_when_sync_mode",
        False,
        "synchronous_mode is on but no standby is synchronous in both views "
        f"(Patroni sync_standby: {patroni_sync or 'none'}; pg_stat_replication sync: {server_sync or 'none'}): "
        "commits wait or the guarantee is gone",
        meta,
    )


def evaluate(obs: Observation, *, max_lag_bytes: int, expected_members: int) -> list[CheckOutcome]:
    """The four verdicts, in ``CHECK_NAMES`` order."""
    return [
        exactly_one_leader(obs),
        replicas_streaming(obs, expected_members),
        replication_lag_within_bound(obs, max_lag_bytes),
        sync_standby_present_when_sync_mode(obs),
    ]


def healthy(obs: Observation) -> bool:
    """One leader and every registered replica streaming (what operations wait for before reporting done)."""
    return exactly_one_leader(obs).passed and replicas_streaming(obs, expected_members=0).passed
