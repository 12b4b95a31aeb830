"""Where each Patroni node reaches etcd from: its own loopback address.

The whole 127.0.0.0/8 is local on Linux, so a network partition of one node from etcd is a firewall rule on
that node's address (``ha.partition``) that leaves the other nodes and every replication link untouched. The
stack's etcd listens on these addresses; the partition drill drops traffic from them.
"""

from __future__ import annotations


def node_address(index: int) -> str:
    """The loopback address node ``index`` (1-based) uses to reach etcd."""
    return f"127.0.0.{10 + index}"
