"""The alert drill: inject one safe, reversible fault per alert family, measure injection -> alert at the receiver.

Restore drills prove backups; this proves alarms. Families run concurrently (the drill lasts as long as its
slowest family, about five minutes). Each family:

1. is skipped (with the reason) where it cannot run: no traffic exporter, no replica on a single node;
2. finds its rule among the rules Prometheus has loaded and derives its bound (``bounds``); a family whose
   rule is not loaded reports "alert rule not loaded", a failed verdict (the archiving family still injects and
   undoes its fault, which PostgreSQL confirms, so the fault path stays proven);
3. refuses to start when its alert is already active (it could not tell its own alert from the real one);
4. records its fault in the journal, injects it, waits for the alert at the receiver (or, without a local
   receiver, in Alertmanager), and undoes the fault in ``finally``.

Time to detect is from the end of the injection to the receiver's ``received_at``.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cqox_platform.alerts.client import AlertmanagerClient, AlertmanagerError, ReceiverClient
from cqox_platform.alerts.drill import faults
from cqox_platform.alerts.drill.bounds import (
    Bound,
    LoadedRule,
    find_rule,
    group_interval,
    group_wait,
    scrape_interval,
)
from cqox_platform.alerts.drill.journal import FaultJournal, recover
from cqox_platform.errors import CqoxError
from cqox_platform.metrics.prometheus import PrometheusClient
from cqox_platform.pushgateway import STALE_AFTER_PERIODS, STALE_ALERT, Pushgateway
from cqox_platform.slo.rules import ALERT_NAMES, PAGE, record_name
from cqox_platform.slo.spec import RatioSlo, SloSpec

FAMILIES = ("stale_push", "slo_burn", "archiving", "replica_paused")
#: Alerts defined by the exporter rules.
ARCHIVER_ALERT = "CqoxPostgresArchiverFailing"
REPLICA_LAG_ALERT = "CqoxReplicaLagHigh"
#: Seconds the leader's writes take to push a paused replica's lag over the alert's threshold (the writer emits
#: about 4 MiB/s of WAL).
REPLICA_LAG_RAMP_SECONDS = 30.0
#: How long past its bound a family keeps waiting, to record a late alert rather than none.
LATE_GRACE = 0.5
POLL_SECONDS = 2.0
PASSING = ("detected", "skipped")

Connect = Callable[[], Any]


@dataclass
class DrillEnv:
    prometheus: PrometheusClient
    alertmanager: AlertmanagerClient
    receiver: ReceiverClient | None
    journal: FaultJournal
    spec: SloSpec
    drill_id: str
    pushgateway: Pushgateway | None = None
    traffic_url: str | None = None
    archiver_settings: Path | None = None
    connect: Connect | None = None
    connect_replica: Connect | None = None
    log: Callable[[str], None] = print
    #: Set when the drill is interrupted (run terminated): families stop waiting and undo their faults at once.
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class FamilyResult:
    family: str
    alertname: str
    status: str
    bound_seconds: float | None = None
    bound_formula: str = ""
    time_to_detect: float | None = None
    injected_at: float | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status in PASSING

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class _Loaded:
    groups: dict[str, dict]
    scrape: float
    group_wait: float


class Family:
    name = ""
    alertname = ""
    inject_without_rule = False

    def __init__(self, env: DrillEnv) -> None:
        self.env = env

    def skip_reason(self) -> str | None:
        return None

    def matchers(self) -> dict[str, str]:
        return {}

    def rule(self, loaded: _Loaded) -> LoadedRule | None:
        return find_rule(loaded.groups, self.alertname)

    def onset(self, loaded: _Loaded, rule: LoadedRule) -> tuple[float, str]:
        return loaded.scrape, "one scrape of the exporter"

    def inject(self) -> str:
        raise NotImplementedError

    def confirm(self) -> None:
        """Prove the fault took effect (raise when it did not)."""

    def during(self, stop: threading.Event) -> None:
        """Keep the fault visible while waiting (the replica family writes on the leader)."""

    def after_undo(self) -> str:
        """Prove the system works again; returns what was seen."""
        return ""


class StalePush(Family):
    name, alertname = "stale_push", STALE_ALERT

    def skip_reason(self) -> str | None:
        return None if self.env.pushgateway else "no Pushgateway configured (CQOX_PUSHGATEWAY_URL)"

    @property
    def service(self) -> str:
        # Its own service label: a new Alertmanager group (group_wait applies), never mixed with real alerts.
        return f"alert-drill-{self.env.drill_id}"

    def matchers(self) -> dict[str, str]:
        return {"service": self.service}

    def onset(self, loaded, rule):
        period = faults.DRILL_PUSH_PERIOD_SECONDS
        return STALE_AFTER_PERIODS * period, f"{STALE_AFTER_PERIODS} x the declared push period of {period} s"

    def inject(self) -> str:
        assert self.env.pushgateway is not None  # skip_reason said so
        return faults.inject_stale_push(self.env.journal, self.env.pushgateway, self.service)


class SloBurn(Family):
    name, alertname = "slo_burn", ALERT_NAMES["page"]

    def skip_reason(self) -> str | None:
        return None if self.env.traffic_url else "no traffic exporter (CQOX_TRAFFIC_URL; `stack up --traffic`)"

    def matchers(self) -> dict[str, str]:
        return {"service": self.env.spec.service}

    def rule(self, loaded):
        return find_rule(loaded.groups, self.alertname, {"service": self.env.spec.service})

    def onset(self, loaded, rule):
        # The burn must show in the long window too: with an hour of healthy history before, the injected error
        # share e crosses the lowest page threshold t after t/e of the long window.
        fast = PAGE[0]
        budgets = [1 - s.objective for s in self.env.spec.budgeted if isinstance(s, RatioSlo)]
        threshold = fast.factor(self.env.spec.period_days) * min(budgets)
        versions = faults.traffic_settings(str(self.env.traffic_url))
        total = sum(v["rps"] for v in versions.values())
        share = versions[faults.CANARY]["rps"] / total
        long_seconds = 3600 * {"1h": 1, "6h": 6}.get(fast.long, 1)
        ramp = threshold / share * long_seconds
        recording = group_interval(loaded.groups, f"{self.env.spec.service}-slo-recording") or rule.interval_seconds
        onset = max(2 * loaded.scrape, ramp) + recording
        return round(onset, 1), (
            f"canary 5xx at {share:.1%} of requests exceed the {threshold:.3g} page threshold over "
            f"{fast.long} after {ramp:.0f} s, then one {record_name(fast.long)} recording ({recording:g} s)"
        )

    def inject(self) -> str:
        return faults.inject_slo_burn(self.env.journal, str(self.env.traffic_url))


def _archiver(connect: Connect) -> dict[str, Any]:
    with connect() as conn:
        row = conn.execute(
            "SELECT archived_count, failed_count, last_archived_wal, last_archived_time, last_failed_time "
            "FROM pg_stat_archiver"
        ).fetchone()
    return dict(zip(("archived", "failed", "last_wal", "last_archived", "last_failed"), row, strict=True))


def _switch_wal(connect: Connect) -> None:
    with connect() as conn:
        conn.execute("SELECT pg_logical_emit_message(false, 'cqox-alert-drill', 'switch')")
        conn.execute("SELECT pg_switch_wal()")


def _wait_for(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise faults.DrillFaultError(f"{what} not seen within {timeout:g} s")
        time.sleep(1)


class Archiving(Family):
    name, alertname = "archiving", ARCHIVER_ALERT
    inject_without_rule = True  # PostgreSQL itself confirms the fault and its undo

    def skip_reason(self) -> str | None:
        if not self.env.archiver_settings or not Path(self.env.archiver_settings).exists():
            return "no archiver settings file (CQOX_WAL_ARCHIVER_CONFIG) on this host"
        return None if self.env.connect else "no database connection"

    def inject(self) -> str:
        assert self.env.connect and self.env.archiver_settings
        self._before = _archiver(self.env.connect)
        return faults.inject_archiving(self.env.journal, Path(self.env.archiver_settings))

    def confirm(self) -> None:
        connect = self.env.connect
        assert connect
        _switch_wal(connect)
        _wait_for("a failed archive_command", lambda: _archiver(connect)["failed"] > self._before["failed"], 90)

    def after_undo(self) -> str:
        connect = self.env.connect
        assert connect
        start = _archiver(connect)["archived"]
        _switch_wal(connect)
        _wait_for("archiving working again", lambda: _archiver(connect)["archived"] > start, 120)
        now = _archiver(connect)
        failures = now["failed"] - self._before["failed"]
        return f"archiving works again: {now['last_wal']} archived after {failures} failed attempt(s)"


class ReplicaPaused(Family):
    name, alertname = "replica_paused", REPLICA_LAG_ALERT
    inject_without_rule = True  # the process state and the leader's replication view confirm fault and undo

    def skip_reason(self) -> str | None:
        if self.env.connect_replica is None:
            return "single-node stack: no replica to pause (runs on an HA stack, `stack up --ha`)"
        return None if self.env.connect else "no database connection"

    def onset(self, loaded, rule):
        return loaded.scrape + REPLICA_LAG_RAMP_SECONDS, f"{REPLICA_LAG_RAMP_SECONDS:g} s of writes, one scrape"

    def inject(self) -> str:
        assert self.env.connect_replica
        with self.env.connect_replica() as conn:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'").fetchone()
        if row is None:
            raise faults.DrillFaultError("the replica has no startup process (is it a replica?)")
        self._pid = int(row[0])
        return faults.inject_replica_paused(self.env.journal, self._pid)

    def confirm(self) -> None:
        _wait_for(f"replica startup process {self._pid} stopped", lambda: faults.process_state(self._pid) == "T", 10)

    def during(self, stop: threading.Event) -> None:
        assert self.env.connect
        with self.env.connect() as conn:
            while not stop.wait(0.25):
                conn.execute("SELECT pg_logical_emit_message(true, 'cqox-alert-drill', repeat('x', 1048576))")

    def after_undo(self) -> str:
        connect = self.env.connect
        assert connect
        with connect() as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]

        def caught_up() -> bool:
            with connect() as conn:
                behind = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn IS NULL OR replay_lsn < %s::pg_lsn",
                    (str(target),),
                ).fetchone()[0]
            return behind == 0

        _wait_for("every replica replaying again", caught_up, 120)
        return f"replica startup process {self._pid} resumed; every replica replayed past {target}"


FAMILY_TYPES: dict[str, type[Family]] = {f.name: f for f in (StalePush, SloBurn, Archiving, ReplicaPaused)}


def arrived(records: list[dict[str, Any]], alertname: str, matchers: dict[str, str]) -> dict[str, Any] | None:
    """The first received notification that carries a firing alert ``alertname`` with ``matchers``."""
    wanted = {"alertname": alertname, **matchers}
    for record in records:
        if record.get("kind") == "webhook":
            for alert in record["body"].get("alerts", []):
                labels = alert.get("labels", {})
                if alert.get("status") == "firing" and all(labels.get(k) == v for k, v in wanted.items()):
                    return record
        elif record.get("kind") == "pagerduty" and record.get("event_action") == "trigger":
            text = json.dumps(record["body"].get("payload", {}))
            if all(f"{k} = {v}" in text for k, v in wanted.items()):
                return record
    return None


def _active_in_alertmanager(am: AlertmanagerClient, alertname: str, matchers: dict[str, str]) -> bool:
    filters = [f'alertname="{alertname}"', *(f'{k}="{v}"' for k, v in matchers.items())]
    return any(a["status"]["state"] == "active" for a in am.alerts(filter=filters))


def _wait_for_alert(env: DrillEnv, family: Family, since: float, timeout: float) -> float | None:
    deadline = since + timeout
    while time.time() < deadline and not env.cancel.is_set():
        if env.receiver is not None:
            found = arrived(env.receiver.received(since), family.alertname, family.matchers())
            if found:
                return float(found["received_at"]) - since
        elif _active_in_alertmanager(env.alertmanager, family.alertname, family.matchers()):
            return time.time() - since
        env.cancel.wait(POLL_SECONDS)
    return None


def run_family(env: DrillEnv, family: Family, loaded: _Loaded) -> FamilyResult:
    """One family's verdict; any error becomes an "error" verdict, never an exception that stops the others."""
    try:
        return _run_family(env, family, loaded)
    except Exception as exc:
        return FamilyResult(family.name, family.alertname, "error", detail=f"{family.name}: {exc}")


def _run_family(env: DrillEnv, family: Family, loaded: _Loaded) -> FamilyResult:
    result = FamilyResult(family.name, family.alertname, "error")
    reason = family.skip_reason()
    if reason:
        result.status, result.detail = "skipped", reason
        return result
    rule = family.rule(loaded)
    if rule is None and not family.inject_without_rule:
        result.status, result.detail = "alert rule not loaded", f"no rule {family.alertname} loaded in Prometheus"
        return result
    if rule is not None:
        onset, why = family.onset(loaded, rule)
        bound = Bound(onset, why, loaded.scrape, rule.interval_seconds, rule.for_seconds, loaded.group_wait)
        if env.receiver is None:
            bound = Bound(onset, why, loaded.scrape, rule.interval_seconds, rule.for_seconds, 0.0)
        result.bound_seconds, result.bound_formula = round(bound.seconds, 1), bound.formula()
        if _active_in_alertmanager(env.alertmanager, family.alertname, family.matchers()):
            result.status = "already firing"
            result.detail = f"{family.alertname} was active before the drill: its own alert would be indistinguishable"
            return result
    entry: str | None = None
    stop = threading.Event()
    keeper: threading.Thread | None = None
    try:
        entry = family.inject()
        result.injected_at = time.time()
        env.log(f"{family.name}: fault injected (journal entry {entry})")
        family.confirm()
        if rule is None:
            result.status = "alert rule not loaded"
            result.detail = f"fault injected and confirmed, but no rule {family.alertname} is loaded in Prometheus"
        else:
            keeper = threading.Thread(target=family.during, args=(stop,), daemon=True)
            keeper.start()
            assert result.bound_seconds is not None
            ttd = _wait_for_alert(env, family, result.injected_at, result.bound_seconds * (1 + LATE_GRACE))
            result.time_to_detect = None if ttd is None else round(ttd, 1)
            if ttd is None:
                result.status = "not detected"
                result.detail = f"no {family.alertname} at the receiver within {result.bound_seconds * 1.5:.0f} s"
            else:
                result.status = "detected" if ttd <= result.bound_seconds else "late"
                result.detail = (
                    f"{family.alertname} arrived {ttd:.1f} s after injection (bound {result.bound_seconds} s)"
                )
    except Exception as exc:
        result.status, result.detail = "error", f"{family.name}: {exc}"
    finally:
        stop.set()
        if keeper is not None:
            keeper.join(timeout=10)
        if entry is not None:
            _undo(env, family, entry, result)
    return result


def _undo(env: DrillEnv, family: Family, entry: str, result: FamilyResult) -> None:
    try:
        faults.undo_entry(env.journal, entry)
    except Exception as exc:  # reported in the verdict; the journal keeps the entry for the next recovery
        result.status = "error"
        result.detail += f"; fault NOT undone ({exc}): left in {env.journal.path} for the next drill or stack up"
        return
    env.log(f"{family.name}: fault undone")
    try:
        seen = family.after_undo()
    except CqoxError as exc:
        result.status = "error"
        result.detail += f"; NOT working again after the undo: {exc}"
    else:
        if seen:
            result.detail += f"; {seen}"


def run_drill(env: DrillEnv, families: list[str]) -> tuple[list[FamilyResult], list[str]]:
    """Recover what an earlier drill left, then run ``families`` concurrently; returns results and recovery."""
    unknown = sorted(set(families) - set(FAMILY_TYPES))
    if unknown:
        raise CqoxError(f"unknown alert drill families {unknown}; known: {list(FAMILY_TYPES)}")
    recovered = recover(env.journal, faults.UNDOERS)
    for line in recovered:
        env.log(f"journal recovery: {line}")
    try:
        loaded = _Loaded(
            env.prometheus.rule_groups(),
            scrape_interval(env.prometheus.loaded_config()),
            group_wait(env.alertmanager.status()),
        )
    except AlertmanagerError as exc:
        raise CqoxError(f"cannot read what Alertmanager runs: {exc}") from None
    chosen = [FAMILY_TYPES[name](env) for name in families]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen) or 1, thread_name_prefix="alert-drill")
    futures = [pool.submit(run_family, env, family, loaded) for family in chosen]
    try:
        results = [future.result() for future in futures]
    except BaseException:
        # Interrupted (a terminated run raises here): stop the waits; each family undoes its fault in `finally`.
        env.cancel.set()
        pool.shutdown(wait=True)
        raise
    pool.shutdown()
    return results, recovered


__all__ = ["FAMILIES", "DrillEnv", "FamilyResult", "run_drill"]
