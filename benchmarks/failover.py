"""How long from ``kill -9`` of the leader's postmaster to a new leader accepting writes?  (issue 7, HA)

Starts its own HA stack (etcd, three Patroni nodes, HAProxy; no Dagster) in a temporary directory, or uses
the HA stack of ``--stack-dir``, and runs ``--runs`` failovers. Each one kills the leader's postmaster and
measures two times from the kill: until another node's PostgreSQL leaves recovery (the promotion), and until
an INSERT through HAProxy (the endpoint every client uses) commits. Between runs it waits until the old
leader is back as a streaming replica, so every failover starts from a healthy three-node cluster.

The anchor measured in the same run is Patroni's own configuration, read back from its REST API: a crashed
leader is noticed within ``loop_wait`` and handed over at once (``primary_start_timeout`` 0); ``ttl`` bounds
how long a leader that stops answering altogether can hold the key. The roadmap's target is 30 s; the aim is
10 s.

    python -m benchmarks.failover --runs 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from cqox_platform.pgserver import free_port
from cqox_platform.stack import Stack, StackConfig
from cqox_platform.stack.config import DEFAULT_PORTS

TARGET_SECONDS = 30.0
AIM_SECONDS = 10.0


def _free_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in DEFAULT_PORTS:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return ports


def _writable(conninfo: dict) -> bool:
    try:
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]
    except psycopg.Error:
        return False


def _wait_healthy(stack: Stack, timeout: float = 180.0) -> str:
    service = stack.service("patroni")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if service.healthy():
                return service.client().cluster().leader
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the cluster did not become healthy within {timeout:.0f} s")


def one_failover(stack: Stack, run: int) -> tuple[float, float, str, str]:
    """Kill the leader; return (seconds to promotion, seconds to a committed write, old leader, new leader)."""
    cluster = stack.service("patroni")
    endpoint = {**stack.service("postgres").conninfo(), "connect_timeout": 2}
    leader_name = _wait_healthy(stack)
    leader = next(n for n in cluster.nodes if n.name == leader_name)
    others = [n for n in cluster.nodes if n is not leader]
    pid = leader.postmaster_pid()
    if pid is None:
        raise SystemExit(f"{leader.name} runs no postmaster")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    promoted_after = written_after = None
    new_leader = "?"
    while written_after is None and time.monotonic() - killed < 120:
        if promoted_after is None:
            for node in others:
                if _writable({**endpoint, "port": node.pg_port}):
                    promoted_after, new_leader = time.monotonic() - killed, node.name
                    break
        try:
            with psycopg.connect(**endpoint, autocommit=True) as conn:
                conn.execute("INSERT INTO failover_bench VALUES (%s, now())", (run,))
            written_after = time.monotonic() - killed
        except psycopg.Error:
            time.sleep(0.05)
    if written_after is None:
        raise SystemExit(f"run {run}: no write committed within 120 s of killing {leader.name}")
    if new_leader == "?":  # promoted between two probes: the write found it first
        new_leader = cluster.client().cluster().leader or "?"
    return promoted_after if promoted_after is not None else written_after, written_after, leader.name, new_leader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--stack-dir", type=Path, default=None, help="An existing `stack up --ha` stack.")
    args = parser.parse_args()

    own = args.stack_dir is None
    root = Path(tempfile.mkdtemp(prefix="cqox-failover-bench-", dir="/tmp")) if own else args.stack_dir
    if own:
        root.chmod(0o755)
        stack = Stack(StackConfig(root=root, ports=_free_ports(), with_dagster=False, with_daemon=False, ha=True))
        print(f"starting an HA stack in {root} ...", flush=True)
        stack.up()
    else:
        stack = Stack.from_dir(root)
        if not stack.config.ha:
            raise SystemExit(f"{root} is a single-node stack; start one with `stack up --ha`.")
    try:
        config = stack.service("patroni").client().config()
        ttl, loop_wait, retry = config.get("ttl"), config.get("loop_wait"), config.get("retry_timeout")
        with psycopg.connect(**stack.service("postgres").conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS failover_bench (run int, at timestamptz)")
        promotions, writes = [], []
        for run in range(1, args.runs + 1):
            promoted, written, old, new = one_failover(stack, run)
            promotions.append(promoted)
            writes.append(written)
            print(
                f"failover {run:>2}: {old} -> {new}: promoted after {promoted:5.2f} s, "
                f"first write through HAProxy after {written:5.2f} s",
                flush=True,
            )
        _wait_healthy(stack)
        median, worst = statistics.median(writes), max(writes)
        print()
        print(f"Patroni: ttl {ttl} s, loop_wait {loop_wait} s, retry_timeout {retry} s, primary_start_timeout 0")
        print(f"promotion:         median {statistics.median(promotions):5.2f} s, worst {max(promotions):5.2f} s")
        print(f"kill -9 -> writes: median {median:5.2f} s, worst {worst:5.2f} s ({len(writes)} failovers)")
        print(f"worst / loop_wait = {worst / loop_wait:.2f}x; worst / ttl = {worst / ttl:.2f}x")
        verdict = "met" if worst < TARGET_SECONDS else "NOT met"
        print(
            f"target worst < {TARGET_SECONDS:.0f} s: {verdict}; aim {AIM_SECONDS:.0f} s: "
            f"{'met' if worst < AIM_SECONDS else 'not met'}"
        )
    finally:
        if own:
            stack.down()
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
