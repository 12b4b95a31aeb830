"""The DR region's read-only S3 keys (``s3_server.ReadOnlyKeys``), as ASGI: which requests reach nanio.

Against the real server (nanio under uvicorn, boto3 clients) in tests/integration/test_stack.py; here every kind of
request, including malformed ones, without a server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cqox_platform.stack.s3_server import ReadOnlyKeys, claimed_access_key, read_only_keys

READER, WRITER = "cqox-reader", "cqox-writer"


def _auth(key: str) -> bytes:
    return (
        f"AWS4-HMAC-SHA256 Credential={key}/20261204/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=abc"
    ).encode()


def _scope(method: str, *, auth: bytes | None = None, query: str = "") -> dict:
    headers = [(b"host", b"127.0.0.1")] + ([(b"authorization", auth)] if auth is not None else [])
    return {"type": "http", "method": method, "path": "/b/k", "query_string": query.encode(), "headers": headers}


def _call(scope: dict, body: list[bytes] = (b"",)) -> tuple[bool, list[dict]]:
    """(whether the wrapped app was called, what was sent)."""
    reached, sent = [], []
    messages = [{"type": "http.request", "body": b, "more_body": i < len(body) - 1} for i, b in enumerate(body)]

    async def app(scope, receive, send):
        reached.append(scope["method"])

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(ReadOnlyKeys(app, {READER})(scope, receive, send))
    return bool(reached), sent


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_a_read_only_key_cannot_write_and_its_body_is_read(method):
    reached, sent = _call(_scope(method, auth=_auth(READER)), [b"part one", b"part two"])
    assert not reached
    assert sent[0]["status"] == 403 and b"<Code>AccessDenied</Code>" in sent[1]["body"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_read_only_key_reads(method):
    assert _call(_scope(method, auth=_auth(READER)))[0]


@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "DELETE"])
def test_a_writer_key_reaches_nanio_which_checks_its_signature(method):
    assert _call(_scope(method, auth=_auth(WRITER)))[0]


def test_a_presigned_write_with_a_read_only_key_is_refused():
    query = f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={READER}%2F20261204%2Fus-east-1%2Fs3%2Faws4_request"
    assert claimed_access_key(_scope("PUT", query=query)) == READER
    assert not _call(_scope("PUT", query=query))[0]
    # A header naming the writer does not help: nanio reads the presigned query first, and so does the check.
    assert not _call(_scope("PUT", auth=_auth(WRITER), query=query))[0]


@pytest.mark.parametrize("auth", [None, b"", b"AWS4-HMAC-SHA256 nonsense", b"Basic dXNlcjpwYXNz"])
def test_a_write_whose_key_cannot_be_read_is_refused(auth):
    assert not _call(_scope("PUT", auth=auth))[0]


def test_without_read_only_keys_everything_passes():
    async def app(scope, receive, send):
        reached.append(True)

    reached: list[bool] = []
    asyncio.run(ReadOnlyKeys(app, [])(_scope("PUT", auth=_auth(READER)), None, None))
    assert reached


def test_read_only_keys_are_the_users_marked_so(tmp_path: Path):
    options = tmp_path / "nanio.toml"
    options.write_text(
        f'[[users]]\naccess_key = "{WRITER}"\nsecret_key = "s1"\n\n'
        f'[[users]]\naccess_key = "{READER}"\nsecret_key = "s2"\nread_only = true\n\n'
        '[[users]]\naccess_key = "quoted"\nsecret_key = "s3"\nread_only = "true"\n'
    )
    assert read_only_keys(options) == {READER}  # only a real boolean marks a key read-only
