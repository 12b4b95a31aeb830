"""Network partitions for drills: cut one Patroni node off from etcd, and nothing else, with nftables.

Each node reaches etcd on its own loopback address (``ha.addresses.node_address``), so dropping TCP traffic to
and from that address and etcd's port isolates exactly that node from the DCS while its PostgreSQL keeps
replicating and its REST API stays reachable: the situation where Patroni must demote a leader that can no
longer renew its leader key. Packets are dropped (not rejected), so the node sees timeouts as it would on a
real network fault. Needs root and Debian's ``nftables``; each stack gets its own table, named after its etcd
port, so drills on two stacks do not interfere and ``heal`` removes only what ``isolate`` added.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from cqox_platform.errors import HaError
from cqox_platform.ha.addresses import node_address


class PartitionError(HaError):
    """nftables is missing or refused the rule."""


def _table(etcd_port: int) -> str:
    return f"cqox_partition_{etcd_port}"


def _nft(*args: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        proc = subprocess.run([nft, *args], capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise PartitionError("nft is not installed: apt-get install nftables (partition drills need it).") from None
    if proc.returncode != 0:
        raise PartitionError(f"nft {' '.join(args)} failed: {proc.stderr.strip()} (partition drills need root).")


def isolate_from_etcd(node_index: int, etcd_port: int) -> None:
    """Drop every packet between node ``node_index``'s etcd address and etcd's client port."""
    table, address = _table(etcd_port), node_address(node_index)
    _nft("add", "table", "inet", table)
    _nft("add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; policy accept ; }")
    _nft("add", "rule", "inet", table, "out", "ip", "daddr", address, "tcp", "dport", str(etcd_port), "drop")
    _nft("add", "rule", "inet", table, "out", "ip", "saddr", address, "tcp", "sport", str(etcd_port), "drop")


def heal(etcd_port: int) -> None:
    """Remove this stack's partition table; a no-op when there is none (Debian 12's nft has no `destroy`)."""
    try:
        _nft("list", "table", "inet", _table(etcd_port))
    except PartitionError:
        return
    _nft("delete", "table", "inet", _table(etcd_port))


@contextmanager
def partitioned_from_etcd(node_index: int, etcd_port: int) -> Iterator[None]:
    """``isolate_from_etcd`` for the duration of a block, healed even when the block fails."""
    isolate_from_etcd(node_index, etcd_port)
    try:
        yield
    finally:
        heal(etcd_port)
