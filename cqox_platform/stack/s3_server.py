"""Run nanio's ASGI app under uvicorn with TLS 1.3 as the minimum version.

uvicorn's command line cannot set a minimum TLS version, so this launcher loads the config, raises the
SSL context's floor and then serves. Shutdown is bounded: uvicorn otherwise waits on SIGTERM until every client
closes its keep-alive connection, and pooled clients (boto3, the archiver) never do, so every ``stack down``
waited out its timeout and killed the server. Usage: python -m cqox_platform.stack.s3_server HOST PORT CERT KEY
"""

from __future__ import annotations

import ssl
import sys

import uvicorn

#: How long in-flight requests may finish after SIGTERM before open connections are dropped.
GRACEFUL_SHUTDOWN_SECONDS = 3


def main(host: str, port: str, certfile: str, keyfile: str) -> None:
    config = uvicorn.Config(
        "nanio.app:build_app",
        factory=True,
        host=host,
        port=int(port),
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    config.load()
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main(*sys.argv[1:5])
