"""The pushers' view of the Pushgateway: credentials by file path only, and refusals that say what to set."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cqox_platform.errors import CqoxError
from cqox_platform.pushgateway import Pushgateway, push, render


def test_what_is_journaled_or_shown_names_the_password_file_never_the_password(tmp_path):
    secret = tmp_path / "pushgateway-cqox-pusher-password"
    secret.write_text("s3cr3t-pushers-password\n")
    gateway = Pushgateway("https://127.0.0.1:1", "cqox-pusher", secret, tmp_path / "ca.crt")
    assert Pushgateway.from_dict(gateway.as_dict()) == gateway
    assert "s3cr3t" not in repr(gateway) and "s3cr3t" not in str(gateway.as_dict())


def test_a_user_without_a_readable_password_file_fails_before_any_request(tmp_path):
    gateway = Pushgateway("http://127.0.0.1:1", "cqox-pusher", tmp_path / "missing")
    with pytest.raises(CqoxError, match="cannot read the Pushgateway password file"):
        push(gateway, "job", {}, [("cqox_x", {}, 1.0)])


@pytest.fixture
def refusing_gateway():
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="pushgateway"')
            self.end_headers()

        def log_message(self, *args) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_refused_push_says_which_settings_carry_the_credentials(refusing_gateway, tmp_path: Path):
    secret = tmp_path / "password"
    secret.write_text("wrong-password")
    for gateway, who in (
        (Pushgateway(refusing_gateway), "no credentials"),
        (Pushgateway(refusing_gateway, "cqox-pusher", secret), "user cqox-pusher"),
    ):
        with pytest.raises(CqoxError, match=f"refused the metrics with {who} .*CQOX_PUSHGATEWAY_PASSWORD_FILE") as info:
            push(gateway, "job", {}, [("cqox_x", {}, 1.0)], replace=True)
        assert "wrong-password" not in str(info.value)


@pytest.fixture
def recording_gateway():
    """An HTTP endpoint that keeps each request's method, path and body, answering 200 as the Pushgateway does."""
    received: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        do_PUT = do_POST = do_DELETE = _record

        def log_message(self, *args) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


AWKWARD = 'line one\nline two \\ with a "quote"'


def test_a_label_value_with_a_newline_a_backslash_and_a_quote_arrives_intact(recording_gateway):
    from prometheus_client.parser import text_string_to_metric_families

    url, received = recording_gateway
    sent = push(Pushgateway(url), "cqox-test", {"service": "svc"}, [("cqox_x", {"detail": AWKWARD}, 1.5)])
    (method, path, body) = received[-1]
    samples = [s for family in text_string_to_metric_families(body) for s in family.samples]
    assert [(s.name, s.labels, s.value) for s in samples] == [("cqox_x", {"detail": AWKWARD}, 1.5)], body
    assert (method, path, sent) == ("POST", "/metrics/job/cqox-test/service/svc", 1)


def test_the_text_format_escapes_label_values_and_skips_missing_values():
    text = render(
        [("m", {"a": 'x"y\\z\nw'}, 1.5), ("m", {"a": "b"}, None), ("m", {"a": "c"}, float("nan")), ("n", {}, 2)]
    )
    assert text.splitlines() == [
        "# HELP m ",
        "# TYPE m gauge",
        'm{a="x\\"y\\\\z\\nw"} 1.5',
        "# HELP n ",
        "# TYPE n gauge",
        "n 2.0",
    ]
