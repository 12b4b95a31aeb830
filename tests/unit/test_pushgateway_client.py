"""The pushers' view of the Pushgateway: credentials by file path only, and refusals that say what to set."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cqox_platform.errors import CqoxError
from cqox_platform.pushgateway import Pushgateway, push


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
