"""The dead man's switch on the real stack: with Prometheus killed, and then Alertmanager killed, no rule can fire,
yet a page arrives, raised by the receiver (the stand-in for a dead-man's-snitch service) when the always-firing
Watchdog's notifications stop.

Intervals are compressed: the Watchdog's route sends every 5 s and the receiver pages after 20 s of silence (the
shipped routing: every minute, and 3 minutes; its promtool and amtool tests check those). What cannot be
compressed only on the stack's side is Prometheus's own promise to Alertmanager: each alert it sends stays valid
for 4 x its resend delay (15 s on the local stack, Prometheus's default 1 minute elsewhere), so Alertmanager goes
on notifying the Watchdog for up to a minute after Prometheus died (4 minutes with the default).
The bounds below are those sums plus slack for a loaded machine; the measured times are printed (``-s``).
Each kill is undone (the service restarted, the heartbeat back and the page resolved) before the next.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest

from cqox_platform.alerts.client import ReceiverClient
from cqox_platform.alerts.routing import install, load_spec, render, validate
from cqox_platform.stack.prometheus import RESEND_DELAY
from tests.helpers import alerting_on, alertmanager_client, received_about, wait_for_received

SEND_EVERY, WITHIN = "5s", 20
#: Alertmanager keeps a dead Prometheus's alerts until their end time: 4 x the stack's resend delay.
ALERT_VALIDITY = 4 * int(RESEND_DELAY.removesuffix("s"))
SLACK = 60
PROMETHEUS_BOUND = ALERT_VALIDITY + WITHIN + 5 + SLACK
ALERTMANAGER_BOUND = WITHIN + 5 + SLACK


@pytest.fixture(scope="module")
def compressed(stack):
    """Every platform rule loaded (the Watchdog among them), and the routing with the heartbeat route compressed;
    the routing Alertmanager had is put back afterwards."""
    env = alerting_on(stack)
    am = alertmanager_client(env)
    config_file = Path(env["CQOX_ALERTMANAGER_CONFIG_FILE"])
    shipped = config_file.read_text()
    spec = load_spec()
    fast = dataclasses.replace(
        spec,
        heartbeat=dataclasses.replace(
            spec.heartbeat, group_interval=SEND_EVERY, repeat_interval="4s", expect_within=f"{WITHIN}s"
        ),
    )
    key = (stack.config.secrets_dir / "pagerduty-routing-key").read_text().strip()
    receiver_url = env["CQOX_ALERT_RECEIVER_URL"]
    text = render(
        fast,
        pagerduty_url=env["CQOX_PAGERDUTY_EVENTS_URL"],
        routing_key=key,
        webhook_url=env["CQOX_ALERT_WEBHOOK_URL"],
        heartbeat_url=f"{receiver_url}/heartbeat/watchdog?within={WITHIN}",
    )
    validate(fast, text, secrets=(key,))
    install(am, config_file, text)
    try:
        yield env
    finally:
        if not stack.service("alertmanager").running():
            stack.service("alertmanager").start()
        install(alertmanager_client(env), config_file, shipped)


def _beating(receiver: ReceiverClient, since: float, timeout: float = 180) -> None:
    """Wait until the Watchdog's notifications arrive, with the compressed allowance, after ``since``."""
    deadline = time.monotonic() + timeout
    while True:
        beat = receiver.heartbeats().get("watchdog", {})
        if beat.get("within_seconds") == WITHIN and beat.get("last_at", 0) > since and not beat.get("paging"):
            return
        assert time.monotonic() < deadline, f"no Watchdog heartbeat since {since} within {timeout} s: {beat}"
        time.sleep(1)


def _deadman(records: list[dict], action: str) -> list[dict]:
    return [r for r in records if r["kind"] == "deadman" and r["name"] == "watchdog" and r["event_action"] == action]


def _kill_and_page(stack, receiver: ReceiverClient, service: str, bound: float) -> float:
    """SIGKILL ``service``; wait (up to ``bound``) for the receiver's own page; restart it; wait for the heartbeat
    to come back and the page to resolve. Returns the seconds from the kill to the page."""
    victim = stack.service(service)
    _beating(receiver, time.time() - 10)
    killed_at = time.time()
    os.kill(victim.read_pid(), signal.SIGKILL)
    try:
        records = wait_for_received(receiver, killed_at, lambda rs: _deadman(rs, "trigger"), timeout=bound)
        (page,) = _deadman(records, "trigger")
        assert "no heartbeat 'watchdog'" in page["body"]["summary"]
    finally:
        victim.start()
    restarted_at = time.time()
    wait_for_received(receiver, restarted_at - 1, lambda rs: _deadman(rs, "resolve"), timeout=180)
    return page["received_at"] - killed_at


@pytest.mark.timeout(1200)  # two outages, the first at least a minute long, and two restarts
def test_a_page_arrives_after_prometheus_is_killed_and_after_alertmanager_is_killed(stack, compressed):
    receiver = ReceiverClient(compressed["CQOX_ALERT_RECEIVER_URL"])
    started = time.time()
    after_prometheus = _kill_and_page(stack, receiver, "prometheus", PROMETHEUS_BOUND)
    print(f"\nPrometheus killed -> dead man's switch page: {after_prometheus:.1f} s (bound {PROMETHEUS_BOUND} s)")
    after_alertmanager = _kill_and_page(stack, receiver, "alertmanager", ALERTMANAGER_BOUND)
    print(f"Alertmanager killed -> dead man's switch page: {after_alertmanager:.1f} s (bound {ALERTMANAGER_BOUND} s)")
    records = receiver.received(started)
    assert len(_deadman(records, "trigger")) == 2, "one page per outage"
    # The Watchdog itself never reaches a person: only the heartbeat receiver hears it.
    assert not received_about(records, "cqox-platform", "Watchdog")
