"""What an operator reads when Prometheus cannot answer: where, why, in words; never a URL-encoded query."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cqox_platform.metrics.prometheus import PrometheusClient, PrometheusError
from cqox_platform.pgserver import free_port

QUERY = 'sum(rate(http_requests_total{job="cqox-engine",code=~"5.."}[5m]))'


@pytest.fixture
def closed_port() -> int:
    return free_port()  # nothing listens on it


@pytest.mark.parametrize("call", ["query", "query_range", "rule_groups"])
def test_a_closed_port_says_unreachable_connection_refused(closed_port, call) -> None:
    client = PrometheusClient(f"http://127.0.0.1:{closed_port}", timeout=5)
    with pytest.raises(PrometheusError) as raised:
        if call == "query":
            client.query(QUERY)
        elif call == "query_range":
            start = datetime(2026, 3, 9, tzinfo=UTC)
            client.query_range(QUERY, start, start + timedelta(hours=1), "60s")
        else:
            client.rule_groups()
    message = str(raised.value)
    assert message.startswith(f"Prometheus at http://127.0.0.1:{closed_port} unreachable: connection refused"), message
    assert "%28" not in message and "%7B" not in message and "query=" not in message, message
    assert "HTTPConnectionPool" not in message and "Max retries" not in message, message


def test_an_unknown_host_says_the_name_does_not_resolve() -> None:
    client = PrometheusClient("http://prometheus.invalid:9090", timeout=5)
    with pytest.raises(PrometheusError) as raised:
        client.query("up")
    message = str(raised.value)
    assert message.startswith("Prometheus at http://prometheus.invalid:9090 unreachable: "), message
    assert "name" in message.lower() or "resolv" in message.lower(), message
    assert "query=" not in message, message


class _BadRequest(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"error","errorType":"bad_data","error":"parse error at char 5: unexpected"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _BadRequest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_query_names_the_expression_and_prometheus_reason(refusing_server) -> None:
    client = PrometheusClient(refusing_server, timeout=5)
    with pytest.raises(PrometheusError) as raised:
        client.query("sum(up")
    message = str(raised.value)
    assert message.startswith(f"Prometheus at {refusing_server} refused `sum(up`: "), message
    assert "parse error at char 5" in message and "%28" not in message, message
