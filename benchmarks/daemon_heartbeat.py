"""How long does a dead Dagster daemon take to page, and how long is the heartbeat's gap across a restart?

Starts its own single-node stack with the Dagster daemon (every default sensor and schedule running, as on a
fresh install) in a temporary directory, loads the routing and the platform's alert rules (vault_config,
alertmanager_config, platform_alert_rules through ``dagster asset materialize``), then:

1. restarts the daemon ``--restarts`` times (stop, start) and measures, from the Pushgateway, the time between
   the last heartbeat before the stop and the first one after the start: what CqoxDagsterHeartbeatMissing must
   tolerate without paging (its rule allows 100 s stale for 30 s; a gap up to 115 s never fires);
2. kills the daemon (SIGKILL of the daemon process) and measures the time to the page at the stack's receiver,
   from the kill and from the last heartbeat (the target: under 3 minutes);

and checks that none of the restarts paged.

    python -m benchmarks.daemon_heartbeat --restarts 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.failover import _free_ports
from cqox_platform.alerts.client import ReceiverClient
from cqox_platform.alerts.heartbeat import HEARTBEAT_JOB
from cqox_platform.pushgateway import Pushgateway
from cqox_platform.settings import Settings
from cqox_platform.stack import Stack, StackConfig
from cqox_platform.stack.process import find_binary

ALERT = "CqoxDagsterHeartbeatMissing"


def last_heartbeat(gateway: Pushgateway) -> float | None:
    """The heartbeat group's push time on the Pushgateway (``None`` before the first push)."""
    text = gateway.request("GET", "/metrics", what="the metrics page", timeout=5).text
    for line in text.splitlines():
        if line.startswith("push_time_seconds{") and f'job="{HEARTBEAT_JOB}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_heartbeat(gateway: Pushgateway, after: float, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at = last_heartbeat(gateway)
        if at is not None and at > after:
            return at
        time.sleep(0.5)
    raise SystemExit(f"no heartbeat after {after:.0f} within {timeout:.0f} s")


def pages(receiver: ReceiverClient, since: float) -> list[dict]:
    return [
        r
        for r in receiver.received(since)
        if r["kind"] == "pagerduty" and r["event_action"] == "trigger" and ALERT in json.dumps(r["body"])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cqox-daemon-bench-", dir="/tmp"))
    root.chmod(0o755)
    stack = Stack(StackConfig(root=root, ports=_free_ports(), with_dagster=True, with_daemon=True))
    print(f"starting a stack with the Dagster daemon in {root} ...", flush=True)
    stack.up()
    env = {**os.environ, **stack.env()}
    try:
        settings = Settings.model_validate(
            {Settings.env_names()[k]: v for k, v in env.items() if k.startswith("CQOX_")}
        )
        gateway = Pushgateway.from_settings(settings)
        assert gateway is not None
        receiver = ReceiverClient(env["CQOX_ALERT_RECEIVER_URL"])
        print("loading routing and alert rules ...", flush=True)
        subprocess.run(
            [find_binary("dagster"), "asset", "materialize", "-m", "cqox_platform.definitions", "--select",
             "vault_config,alertmanager_config,platform_alert_rules"],
            env=env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        daemon = stack.service("dagster-daemon")
        started = time.time()
        wait_for_heartbeat(gateway, 0)
        gaps = []
        for restart in range(1, args.restarts + 1):
            before = wait_for_heartbeat(gateway, last_heartbeat(gateway) or 0)  # just after a push: the worst case
            stopping = time.time()
            daemon.stop()
            starting = time.time()
            daemon.start()
            after = wait_for_heartbeat(gateway, before)
            gaps.append(after - before)
            print(
                f"restart {restart}: heartbeat gap {after - before:.1f} s (stop {starting - stopping:.1f} s, start to "
                f"first heartbeat {after - starting:.1f} s; load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        time.sleep(150)  # a restart that fired would page within this
        false_pages = pages(receiver, started)
        last = wait_for_heartbeat(gateway, last_heartbeat(gateway) or 0)
        killed = time.time()
        os.kill(daemon.read_pid(), signal.SIGKILL)
        deadline = time.monotonic() + 600
        while not (found := pages(receiver, killed)):
            if time.monotonic() > deadline:
                raise SystemExit("no page within 600 s of killing the daemon")
            time.sleep(1)
        page_at = found[0]["received_at"]
        listed = ", ".join(f"{g:.1f}" for g in gaps)
        print(f"\nheartbeat gaps across {len(gaps)} restarts: {listed} s (max {max(gaps):.1f} s)")
        print(f"pages during the restarts: {len(false_pages)}")
        print(
            f"daemon killed -> {ALERT} page: {page_at - killed:.1f} s ({page_at - last:.1f} s after the last heartbeat)"
        )
    finally:
        pid = stack.service("dagster-daemon").read_pid()
        if pid:  # the killed daemon's group: its code server outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
