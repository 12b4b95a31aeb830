"""Faults in the real services reach the receiver through what Prometheus scrapes, with no Dagster run involved:
WAL archiving broken (one page, then archiving resumes), OpenBao sealed, an exporter stopped, and on the HA
stack the Patroni leader killed (the failover ticket).

Each test undoes its fault in ``finally`` and waits until the service works again, so the session stacks stay
healthy for the tests after these. Times from fault to receiver are printed (``-s``), not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest
import requests

from cqox_platform.alerts.client import ReceiverClient
from cqox_platform.fsutil import write_file
from cqox_platform.pgserver import PG_OS_USER
from cqox_platform.resources.prometheus import PrometheusResource
from tests.helpers import (
    alerting_on,
    received_about,
    wait_for_received,
    wait_healthy,
)

#: Generous bounds for one alert's path (scrape 15 s + evaluation + `for:` + Alertmanager's group_wait 30 s, or
#: a group_interval of 5 minutes if the same group notified shortly before); the tests print the real times.
PAGE_TIMEOUT = 420.0


@pytest.fixture(scope="module")
def single(stack):
    return alerting_on(stack)


@pytest.fixture(scope="module")
def ha(ha_stack):
    return alerting_on(ha_stack)


def _prometheus(env) -> PrometheusResource:
    return PrometheusResource(
        url=env["CQOX_PROMETHEUS_URL"],
        rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
        pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
    )


def _query(env, promql: str) -> list[dict]:
    return _prometheus(env).query(promql)


def _wait_query(env, promql: str, what: str, timeout: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (result := _query(env, promql)):
        assert time.monotonic() < deadline, f"{what}: `{promql}` still empty after {timeout:.0f} s"
        time.sleep(2)
    return result


def _triggers(records: list[dict], service: str, alertname: str) -> list[dict]:
    """Notifications that opened (PagerDuty ``trigger``) or announced (webhook ``firing``) the alert."""
    return [
        r
        for r in received_about(records, service, alertname)
        if r.get("event_action") == "trigger" or r.get("body", {}).get("status") == "firing"
    ]


def _failovers_to(records: list[dict], timeline: int) -> list[dict]:
    """Failover tickets with a firing alert for ``timeline`` (each failover is its own alert, by that label)."""
    return [
        r
        for r in _triggers(records, "patroni", "CqoxPatroniFailover")
        if any(
            a["status"] == "firing"
            and a["labels"].get("timeline") == str(timeline)
            and f"timeline {timeline}" in a["annotations"].get("summary", "")
            for a in r["body"].get("alerts", [])
        )
    ]


def test_every_service_is_scraped_through_its_exporter_over_verified_tls(stack, single):
    statuses = {s.name: s.state for s in stack.status()}
    assert statuses["postgres-exporter"] == statuses["blackbox-exporter"] == "running"
    jobs = {"postgres", "openbao", "alertmanager", "kube-apiserver", "blackbox", "tls-expiry", "openbao-health"}
    up = _wait_query(
        single,
        'count by (job) (up{job=~"' + "|".join(jobs) + '"} == 1)',
        "every service job scraped",
        timeout=60,
    )
    assert {r["metric"]["job"] for r in up} == jobs
    # What the alerts read is there: archiver state, database size, certificate expiry, OpenBao's health code.
    for promql in (
        'cqox_archiver_failing{node="single"}',
        'pg_database_size_bytes{datname="cqox_prod"}',
        'probe_ssl_earliest_cert_expiry{service="openbao"}',
        'probe_http_status_code{job="openbao-health"} == 200',
    ):
        assert _query(single, promql), promql
    # The exporter logs in as the least-privileged monitoring role, and its password is in no argv or log.
    password = (stack.config.secrets_dir / "postgres-monitor-password").read_text().strip()
    exporter = stack.service("postgres-exporter")
    assert password not in Path(f"/proc/{exporter.read_pid()}/cmdline").read_text()
    assert password not in Path(f"/proc/{exporter.read_pid()}/environ").read_text()
    assert password not in exporter.log_path.read_text()
    with psycopg.connect(**stack.service("postgres").conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, pg_has_role('cqox_monitor', 'pg_monitor', 'MEMBER'),"
            " pg_has_role('cqox_monitor', 'pg_write_all_data', 'MEMBER') FROM pg_roles WHERE rolname = 'cqox_monitor'"
        ).fetchone()
        sessions = conn.execute(
            "SELECT DISTINCT usename, ssl FROM pg_stat_activity JOIN pg_stat_ssl USING (pid)"
            " WHERE application_name = 'cqox-postgres-exporter'"
        ).fetchall()
    assert row == (False, True, False)
    assert sessions in ([], [("cqox_monitor", True)])  # between scrapes the exporter may hold no session


def _switch_wal(stack) -> None:
    with psycopg.connect(**stack.service("postgres").conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS service_alert_wal (n int)")
        conn.execute("INSERT INTO service_alert_wal SELECT generate_series(1, 1000)")
        conn.execute("SELECT pg_switch_wal()")


def _archiver(stack) -> tuple:
    with psycopg.connect(**stack.service("postgres").conninfo(), autocommit=True) as conn:
        return conn.execute(
            "SELECT archived_count, last_archived_time, failed_count, last_failed_time FROM pg_stat_archiver"
        ).fetchone()


def test_broken_wal_archiving_pages_once_and_archiving_resumes_when_fixed(stack, single):
    receiver = ReceiverClient(single["CQOX_ALERT_RECEIVER_URL"])
    settings_path = Path(single["CQOX_WAL_ARCHIVER_CONFIG"])
    original = settings_path.read_bytes()
    broken = json.loads(original)
    broken["s3_endpoint"] = "https://127.0.0.1:1"  # nothing listens: every push fails fast
    started = time.time()
    try:
        write_file(settings_path, json.dumps(broken), mode=0o600, owner=PG_OS_USER)
        _switch_wal(stack)
        records = wait_for_received(
            receiver,
            started,
            lambda rs: _triggers(rs, "postgres", "CqoxPostgresArchiverFailing"),
            timeout=PAGE_TIMEOUT,
        )
        (page,) = _triggers(records, "postgres", "CqoxPostgresArchiverFailing")
        print(f"\narchiving broken -> CqoxPostgresArchiverFailing page: {page['received_at'] - started:.1f} s")
        assert page["kind"] == "pagerduty" and page["body"]["payload"]["severity"] == "critical"
        assert _archiver(stack)[2] > 0  # PostgreSQL's own counter saw the failures the page is about
    finally:
        write_file(settings_path, original, mode=0o600, owner=PG_OS_USER)
    fixed_at = time.time()
    deadline = time.monotonic() + 180
    while True:  # PostgreSQL retries the failed segment within a minute, now with the right endpoint
        archived_count, last_archived, _failed, last_failed = _archiver(stack)
        if last_archived is not None and last_archived.timestamp() > max(fixed_at, last_failed.timestamp()):
            break
        assert time.monotonic() < deadline, "archiving did not resume after the endpoint was restored"
        time.sleep(2)
    _switch_wal(stack)  # and the next segment archives too
    deadline = time.monotonic() + 120
    while _archiver(stack)[0] <= archived_count:
        assert time.monotonic() < deadline, "a new segment was not archived after the fix"
        time.sleep(2)
    # Prometheus sees it resolved; and still exactly one page (one group, no duplicate path, no repeat).
    deadline = time.monotonic() + 120
    while _query(single, 'ALERTS{alertname="CqoxPostgresArchiverFailing", alertstate="firing"}'):
        assert time.monotonic() < deadline, "CqoxPostgresArchiverFailing still firing after archiving resumed"
        time.sleep(2)
    assert len(_triggers(receiver.received(started), "postgres", "CqoxPostgresArchiverFailing")) == 1


def test_a_sealed_openbao_pages_and_its_refused_metrics_do_not_page_twice(stack, single):
    receiver = ReceiverClient(single["CQOX_ALERT_RECEIVER_URL"])
    openbao = stack.service("openbao")
    root_token = json.loads(openbao.init_file.read_text())["root_token"]
    started = time.time()
    try:
        sealed = requests.put(
            f"{openbao.url}/v1/sys/seal", headers={"X-Vault-Token": root_token}, verify=openbao.ca_cert, timeout=30
        )
        assert sealed.status_code == 204, sealed.text
        assert openbao._health() == 503
        records = wait_for_received(
            receiver, started, lambda rs: _triggers(rs, "openbao", "CqoxVaultSealed"), timeout=PAGE_TIMEOUT
        )
        (page,) = _triggers(records, "openbao", "CqoxVaultSealed")
        print(f"\nOpenBao sealed -> CqoxVaultSealed page: {page['received_at'] - started:.1f} s")
        assert page["kind"] == "pagerduty"
    finally:
        openbao.after_start()  # unseals with the stack's key and waits until active
    assert openbao.healthy()
    # While sealed, its metrics scrape may fail; that is the seal's page, never a target-down one.
    assert not _query(single, 'max_over_time(ALERTS{alertname="CqoxScrapeTargetDown", job="openbao"}[15m])')
    assert not _triggers(receiver.received(started), "openbao", "CqoxScrapeTargetDown")
    _wait_query(single, 'probe_http_status_code{job="openbao-health"} == 200', "OpenBao healthy again in Prometheus")


def test_a_stopped_exporter_pages_as_a_target_down(stack, single):
    receiver = ReceiverClient(single["CQOX_ALERT_RECEIVER_URL"])
    exporter = stack.service("postgres-exporter")
    started = time.time()
    try:
        exporter.stop()
        records = wait_for_received(
            receiver, started, lambda rs: _triggers(rs, "postgres", "CqoxScrapeTargetDown"), timeout=PAGE_TIMEOUT
        )
        (page,) = _triggers(records, "postgres", "CqoxScrapeTargetDown")
        print(f"\nexporter stopped -> CqoxScrapeTargetDown page: {page['received_at'] - started:.1f} s")
        assert "postgres" in page["body"]["payload"]["summary"]
    finally:
        if not exporter.running():
            exporter.start()
    assert exporter.healthy()
    _wait_query(single, 'up{job="postgres"} == 1', "the exporter scraped again")


@pytest.mark.ha_stack_first  # a failover within the rule's 10 minutes would hold this ticket for group_interval (5m)
def test_killing_the_patroni_leader_raises_the_failover_alert(ha_stack, ha):

    receiver = ReceiverClient(ha["CQOX_ALERT_RECEIVER_URL"])
    cluster = ha_stack.service("patroni")
    before = wait_healthy(ha_stack)
    # Prometheus has seen the current timeline on every node before the fault (the rule compares with it).
    _wait_query(ha, f"min(patroni_postgres_timeline) == {before.timeline}", "Patroni timelines scraped")
    leader = next(n for n in cluster.nodes if n.name == before.leader)
    started = time.time()
    try:
        os.kill(leader.postmaster_pid(), signal.SIGKILL)
        # An earlier failover (another test, within the rule's 10 minutes) may still be firing: this one is a
        # new alert of the group (its timeline label), notified at the group's next interval at the latest.
        records = wait_for_received(
            receiver, started, lambda rs: _failovers_to(rs, before.timeline + 1), timeout=PAGE_TIMEOUT
        )
        ticket = _failovers_to(records, before.timeline + 1)[0]
        print(f"\nleader killed -> CqoxPatroniFailover ticket: {ticket['received_at'] - started:.1f} s")
        assert ticket["kind"] == "webhook" and ticket["name"] == "tickets"
        assert {a["labels"]["scope"] for a in ticket["body"]["alerts"]} == {"cqox-cluster"}
    finally:
        after = wait_healthy(ha_stack, timeout=180)  # the old leader rejoins as a replica
    assert after.leader != before.leader and after.timeline == before.timeline + 1
    # A failover within Patroni's TTL is not a leaderless cluster and never two leaders.
    for name in ("CqoxPatroniNoLeader", "CqoxPatroniTwoLeaders"):
        assert not _triggers(receiver.received(started), "patroni", name), name


def test_prometheus_reads_the_api_server_metrics_and_nothing_else(stack):
    """``cqox-prometheus`` (group ``system:monitoring``) may read ``/metrics``, not a single object."""
    from cqox_platform.stack.kube.pki import kube_pki

    apiserver = stack.service("kube-apiserver")
    pki = kube_pki(stack.config.tls_dir)
    identity = (str(pki.monitoring.cert), str(pki.monitoring.key))

    def get(path: str) -> requests.Response:
        return requests.get(f"{apiserver.url}{path}", cert=identity, verify=str(pki.ca_cert), timeout=10)

    assert get("/metrics").status_code == 200
    for path in ("/api/v1/secrets", "/api/v1/namespaces/default/pods", "/apis/apps/v1/deployments"):
        assert get(path).status_code == 403, path


def test_etcd_metrics_listener_serves_metrics_and_no_keys(ha_stack):
    """Prometheus scrapes etcd without any DCS identity: the metrics listener has no KV API behind it."""
    etcd = ha_stack.service("etcd")
    metrics = requests.get(f"{etcd.metrics_url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "etcd_server_has_leader 1" in metrics.text
    put = requests.post(f"{etcd.metrics_url}/v3/kv/put", json={"key": "Zm9v", "value": "YmFy"}, timeout=10)
    assert put.status_code == 404
    ranged = requests.post(f"{etcd.metrics_url}/v3/kv/range", json={"key": "L3NlcnZpY2Uv"}, timeout=10)
    assert ranged.status_code == 404
