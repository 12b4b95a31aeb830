"""A small client for Patroni's REST API: cluster state, dynamic configuration, switchover, reinit.

Every node answers ``GET /cluster`` with the whole cluster as its DCS sees it, so reads try the nodes in turn
and a dead leader does not blind the caller. Writes (``PATCH /config``, ``POST /switchover``,
``POST /reinitialize``) need the REST user's password, which is read from a file at call time and never kept in
an object that could be logged. TLS is verified against the stack CA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from cqox_platform.errors import HaError

TIMEOUT = 5.0


class PatroniError(HaError):
    """Patroni's REST API refused a request or could not be reached."""


@dataclass(frozen=True)
class Member:
    name: str
    role: str  # leader | replica | sync_standby | standby_leader
    state: str  # running | starting | stopped | crashed | creating replica | ...
    api_url: str
    host: str | None
    port: int | None
    timeline: int | None
    #: Bytes behind the leader's last known LSN (None for the leader or when Patroni does not know).
    lag: int | None
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def is_leader(self) -> bool:
        return self.role in ("leader", "standby_leader")


@dataclass(frozen=True)
class ClusterState:
    members: list[Member]
    paused: bool
    answered_by: str

    @property
    def leaders(self) -> list[Member]:
        return [m for m in self.members if m.is_leader]

    @property
    def leader(self) -> str | None:
        leaders = self.leaders
        return leaders[0].name if len(leaders) == 1 else None

    @property
    def replicas(self) -> list[Member]:
        return [m for m in self.members if not m.is_leader]

    @property
    def timeline(self) -> int | None:
        leaders = self.leaders
        return leaders[0].timeline if len(leaders) == 1 else None

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


def parse_cluster(payload: dict[str, Any], answered_by: str) -> ClusterState:
    """``GET /cluster``'s JSON as typed members (pure, unit-tested)."""
    members = []
    for raw in payload.get("members", []):
        lag = raw.get("lag")
        members.append(
            Member(
                name=str(raw["name"]),
                role=str(raw.get("role", "")),
                state=str(raw.get("state", "")),
                api_url=str(raw.get("api_url", "")),
                host=raw.get("host"),
                port=raw.get("port"),
                timeline=raw.get("timeline"),
                lag=lag if isinstance(lag, int) else None,
                tags=dict(raw.get("tags") or {}),
            )
        )
    return ClusterState(members=members, paused=bool(payload.get("pause")), answered_by=answered_by)


@dataclass(frozen=True)
class PatroniClient:
    urls: list[str]
    cacert: str
    username: str | None = None
    password_file: str | None = None
    timeout: float = TIMEOUT

    def _auth(self) -> tuple[str, str] | None:
        if not self.username or not self.password_file:
            return None
        try:
            return self.username, Path(self.password_file).read_text().strip()
        except OSError as exc:
            message = f"cannot read the Patroni REST password file {self.password_file}: {exc.strerror}."
            raise PatroniError(message) from None

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return requests.request(method, url, verify=self.cacert, timeout=self.timeout, **kwargs)
        except requests.exceptions.SSLError as exc:
            message = f"Patroni at {url} presented a certificate not trusted by {self.cacert}: {exc}"
            raise PatroniError(message) from None
        except requests.RequestException as exc:
            raise PatroniError(f"Patroni at {url} is unreachable: {type(exc).__name__}") from None

    def _get_any(self, path: str) -> tuple[Any, str]:
        """The first node's answer; an error naming every node when none answers."""
        failures = []
        for base in self.urls:
            try:
                response = self._request("GET", f"{base}{path}")
            except PatroniError as exc:
                failures.append(str(exc))
                continue
            if response.status_code == 200:
                return response.json(), base
            failures.append(f"{base}{path} answered {response.status_code}")
        raise PatroniError(f"no Patroni node answered {path}: " + "; ".join(failures))

    def cluster(self) -> ClusterState:
        payload, base = self._get_any("/cluster")
        return parse_cluster(payload, base)

    def config(self) -> dict[str, Any]:
        return self._get_any("/config")[0]

    def node_status(self, api_url: str) -> dict[str, Any]:
        """One node's own view (``GET /patroni``): role, state, timeline, replication state."""
        response = self._request("GET", f"{api_url.rsplit('/patroni', 1)[0]}/patroni")
        if response.status_code not in (200, 503):
            raise PatroniError(f"{api_url} answered {response.status_code} to GET /patroni.")
        return response.json()

    def system_identifier(self, state: ClusterState) -> str:
        """The cluster's PostgreSQL system identifier, as its leader reports it (``GET /patroni``).

        A timeline number names a timeline only within one cluster: a cluster rebuilt behind the same URLs
        (a new initdb) counts its timelines from 1 again.
        """
        leader = state.member(state.leader) if state.leader else None
        if leader is None:
            raise PatroniError(f"the cluster has no single leader ({state.answered_by}): system identifier unknown.")
        found = self.node_status(leader.api_url).get("database_system_identifier")
        if not found or not str(found).isdigit():
            raise PatroniError(f"{leader.api_url} reported no database_system_identifier (got {found!r}).")
        return str(found)

    def _write(self, method: str, path: str, body: dict[str, Any], *, url: str | None = None) -> str:
        auth = self._auth()
        targets = [url] if url else self.urls
        failures = []
        for base in targets:
            try:
                response = self._request(method, f"{base}{path}", json=body, auth=auth)
            except PatroniError as exc:
                failures.append(str(exc))
                continue
            if response.status_code == 401:
                raise PatroniError(f"Patroni at {base} refused the REST credentials for {method} {path}.")
            if response.status_code >= 400:
                raise PatroniError(f"{method} {base}{path} failed ({response.status_code}): {response.text.strip()}")
            return response.text.strip()
        raise PatroniError(f"no Patroni node accepted {method} {path}: " + "; ".join(failures))

    def patch_config(self, change: dict[str, Any]) -> str:
        return self._write("PATCH", "/config", change)

    def switchover(self, candidate: str, attempts: int = 3) -> str:
        """A planned switchover to ``candidate`` (a healthy replica); Patroni waits for it to take over.

        Sent to the leader's own REST API: a node that has just rejoined may still hold a stale view of the
        leader and answer 412 "leader name does not match"; then the cluster is read again and it is retried.
        """
        for attempt in range(1, attempts + 1):
            state = self.cluster()
            if state.leader is None:
                raise PatroniError("switchover needs a leader; the cluster has none (use failover instead).")
            if candidate == state.leader:
                raise PatroniError(f"{candidate} is already the leader.")
            if state.member(candidate) is None:
                names = ", ".join(m.name for m in state.members)
                raise PatroniError(f"{candidate} is not a member of the cluster ({names}).")
            leader_api = state.member(state.leader).api_url.rsplit("/patroni", 1)[0]
            body = {"leader": state.leader, "candidate": candidate}
            try:
                return self._write("POST", "/switchover", body, url=leader_api or None)
            except PatroniError as exc:
                stale_view = "(412)" in str(exc)
                if not stale_view or attempt == attempts:
                    raise
            time.sleep(1.0)
        raise PatroniError(f"switchover to {candidate}: no attempt was made (attempts={attempts}).")

    def reinitialize(self, member: str) -> str:
        """Wipe ``member``'s data directory and clone it again from the leader (a broken replica's cure)."""
        state = self.cluster()
        target = state.member(member)
        if target is None:
            names = ", ".join(m.name for m in state.members)
            raise PatroniError(f"{member} is not a member of the cluster ({names}).")
        if target.is_leader:
            raise PatroniError(f"{member} is the leader; switch over first, then reinitialise it as a replica.")
        base = target.api_url.rsplit("/patroni", 1)[0]
        return self._write("POST", "/reinitialize", {"force": True}, url=base)


NO_CLUSTER_MESSAGE = "this stack has no Patroni cluster (start it with `stack up --ha`)"


class NoPatroniClusterError(PatroniError):
    """The platform runs against a single PostgreSQL node: there is no Patroni cluster to ask."""


def url_list(urls: str | None) -> list[str]:
    """The comma-separated REST URLs of ``CQOX_PATRONI_URLS`` as a list."""
    return [u.strip().rstrip("/") for u in (urls or "").split(",") if u.strip()]


def connect_patroni(
    urls: str | None,
    cacert: str | None,
    username: str | None = None,
    password_file: str | None = None,
    timeout: float = TIMEOUT,
) -> PatroniClient:
    """A client of a configured cluster, or the clear error when there is none (the resource and the CLI)."""
    if not url_list(urls):
        raise NoPatroniClusterError(f"{NO_CLUSTER_MESSAGE}: CQOX_PATRONI_URLS is not set.")
    if not cacert:
        # requests treats an empty `verify` as "do not verify": never talk to Patroni like that.
        raise PatroniError("CQOX_PATRONI_CACERT is not set: Patroni's certificate could not be verified.")
    return PatroniClient(
        urls=url_list(urls),
        cacert=cacert,
        username=username or None,
        password_file=password_file or None,
        timeout=timeout,
    )
