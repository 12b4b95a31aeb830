"""What the ``postgres`` endpoint says about replication: the server it reached and its ``pg_stat_replication``.

Read through the endpoint every client uses (HAProxy on an HA stack), as a superuser login: for other roles
PostgreSQL blanks the LSN columns of ``pg_stat_replication`` and the byte lag could not be computed.
"""

from __future__ import annotations

import psycopg

from cqox_platform.ha.cluster_checks import Endpoint, ReplicationRow

REPLICATION_SQL = """
SELECT application_name,
       state,
       sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint,
       EXTRACT(epoch FROM replay_lag)::float8
  FROM pg_stat_replication
 ORDER BY application_name
"""


def read_endpoint(conn: psycopg.Connection) -> tuple[Endpoint, list[ReplicationRow]]:
    """The server behind the connection and, when it is a primary, its replication rows."""
    port, in_recovery = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    endpoint = Endpoint(port=int(port), in_recovery=bool(in_recovery))
    if endpoint.in_recovery:  # pg_current_wal_lsn() is not allowed on a standby
        return endpoint, []
    rows = [
        ReplicationRow(
            name=str(name),
            state=str(state),
            sync_state=str(sync_state),
            replay_lag_bytes=None if replay is None else int(replay),
            flush_lag_bytes=None if flush is None else int(flush),
            replay_lag_seconds=None if seconds is None else float(seconds),
        )
        for name, state, sync_state, replay, flush, seconds in conn.execute(REPLICATION_SQL).fetchall()
    ]
    return endpoint, rows
