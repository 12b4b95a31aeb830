"""Run nanio's ASGI app under uvicorn with TLS 1.3 as the minimum version, and read-only access keys.

uvicorn's command line cannot set a minimum TLS version, so this launcher loads the config, raises the
SSL context's floor and then serves. Shutdown is bounded: uvicorn otherwise waits on SIGTERM until every client
closes its keep-alive connection, and pooled clients (boto3, the archiver) never do, so every ``stack down``
waited out its timeout and killed the server. Usage: python -m cqox_platform.stack.s3_server HOST PORT CERT KEY

nanio knows several access keys (``[[users]]`` in its options file) but no policies: every key may do
everything. The DR copy needs a key that can read and nothing else (the drills that restore from it), so this
launcher wraps nanio's app in ``ReadOnlyKeys``: a user marked ``read_only = true`` in the same options file (a
field nanio ignores) gets ``AccessDenied`` for every request that is not GET or HEAD. The wrapper decides by
the access key the request names (its ``Authorization`` header or presigned ``X-Amz-Credential``), before
nanio verifies the signature: a request that names a writer key still has to be signed with that key's secret,
and a write whose key cannot be read from the request is refused, so the layer fails closed.
"""

from __future__ import annotations

import os
import ssl
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs

import uvicorn
from nanio.app import build_app
from nanio.auth.sigv4 import parse_authorization_header
from nanio.errors import AccessDenied, S3Error
from starlette.types import ASGIApp, Receive, Scope, Send

#: Requests a read-only key may make: reading objects, listing, reading metadata. Everything else writes
#: (PUT, POST for multipart uploads and batch deletes, DELETE).
READ_METHODS = frozenset({"GET", "HEAD"})
#: How long in-flight requests may finish after SIGTERM before open connections are dropped.
GRACEFUL_SHUTDOWN_SECONDS = 3


def read_only_keys(options_file: Path) -> frozenset[str]:
    """The access keys marked ``read_only = true`` among the options file's ``[[users]]``."""
    with options_file.open("rb") as handle:
        users = tomllib.load(handle).get("users", [])
    return frozenset(u["access_key"] for u in users if isinstance(u, dict) and u.get("read_only") is True)


def claimed_access_key(scope: Scope) -> str | None:
    """The access key a request names, read the way nanio does (presigned query first); None if it names none."""
    query = (scope.get("query_string") or b"").decode("latin-1")
    if "X-Amz-Algorithm=" in query:
        credential = parse_qs(query).get("X-Amz-Credential", [""])[0]
        return credential.split("/", 1)[0] or None
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
    if "authorization" not in headers:
        return None
    try:
        return parse_authorization_header(headers["authorization"]).access_key
    except S3Error:
        return None


class ReadOnlyKeys:
    """ASGI wrapper: requests that would write, made with (or not clearly without) a read-only key, get 403."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = frozenset(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["method"] not in READ_METHODS:
            key = claimed_access_key(scope)
            if key is None or key in self.keys:
                await _drain(receive)
                await _deny(send)
                return
        await self.app(scope, receive, send)


async def _drain(receive: Receive) -> None:
    """Read the refused request's body: bytes left unread on a kept-alive connection would be parsed as the
    start of the client's next request (which then fails with 400)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _deny(send: Send) -> None:
    error = AccessDenied("this access key may only read")
    body = error.to_xml()
    headers = [(b"content-type", b"application/xml"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_policed_app() -> ASGIApp:
    """nanio's app (settings from its environment, as ``nanio.app:build_app``) behind ``ReadOnlyKeys``."""
    options = os.environ.get("NANIO_OPTIONS_FILE")
    keys = read_only_keys(Path(options)) if options else frozenset()
    return ReadOnlyKeys(build_app(), keys)


def main(host: str, port: str, certfile: str, keyfile: str) -> None:
    config = uvicorn.Config(
        "cqox_platform.stack.s3_server:build_policed_app",
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
