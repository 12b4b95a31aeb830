"""Synthetic CQOx HTTP traffic with known true values: a live exporter and an OpenMetrics history generator.

Both derive every sample from the same deterministic model, so tests know exactly what Prometheus should
answer. Per version (``stable``, ``canary``): a request rate, an error ratio (5xx) and a log-normal latency
distribution (median, sigma). Counters are integrals of the rates over time, so a settings change at run time
bends the curve without ever making a counter go backwards.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class VersionTraffic:
    rps: float = 200.0
    error_ratio: float = 0.00005
    latency_median_s: float = 0.08
    latency_sigma: float = 0.6

    def share_within(self, seconds: float) -> float:
        """Log-normal CDF: the share of requests answered within ``seconds``."""
        if seconds <= 0:
            return 0.0
        z = (math.log(seconds) - math.log(self.latency_median_s)) / (self.latency_sigma * math.sqrt(2))
        return 0.5 * (1 + math.erf(z))

    def quantile(self, q: float) -> float:
        """The true latency quantile (what an infinitely fine histogram would give)."""
        return self.latency_median_s * math.exp(self.latency_sigma * math.sqrt(2) * _erfinv(2 * q - 1))


def _erfinv(y: float) -> float:
    """Inverse error function by Newton's method (stdlib has erf, not its inverse)."""
    x = 0.0
    for _ in range(60):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


@dataclass
class Totals:
    """Cumulative counters of one version since the model started."""

    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))

    def advance(self, traffic: VersionTraffic, seconds: float) -> None:
        n = traffic.rps * seconds
        self.requests += n
        self.errors += n * traffic.error_ratio
        mean = traffic.latency_median_s * math.exp(traffic.latency_sigma**2 / 2)
        self.latency_sum += n * mean
        for i, le in enumerate(BUCKETS):
            self.buckets[i] += n * traffic.share_within(le)


def exposition(
    totals: dict[str, Totals], labels: dict[str, str], timestamp: float | None = None, openmetrics: bool = False
) -> Iterator[str]:
    """Text exposition (Prometheus 0.0.4, or OpenMetrics with timestamps for backfills) of the counters."""
    base = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    ts = f" {timestamp:.3f}" if timestamp is not None else ""
    for version, t in sorted(totals.items()):
        sel = f'{base},version="{version}"' if base else f'version="{version}"'
        ok, bad = math.floor(t.requests - t.errors), math.floor(t.errors)
        yield f'http_requests_total{{{sel},code="200"}} {ok}{ts}'
        if bad:
            # As a client library: a labelled series exists from its first increment, so a version that has not
            # failed yet has no 5xx series at all, and every query must read that as 0 errors, not as no data.
            yield f'http_requests_total{{{sel},code="500"}} {bad}{ts}'
    if not openmetrics:
        yield "# TYPE http_request_duration_seconds histogram"
    for version, t in sorted(totals.items()):
        sel = f'{base},version="{version}"' if base else f'version="{version}"'
        for le, count in zip(BUCKETS, t.buckets, strict=True):
            yield f'http_request_duration_seconds_bucket{{{sel},le="{le!r}"}} {math.floor(count)}{ts}'
        total = math.floor(t.requests)
        yield f'http_request_duration_seconds_bucket{{{sel},le="+Inf"}} {total}{ts}'
        yield f"http_request_duration_seconds_count{{{sel}}} {total}{ts}"
        yield f"http_request_duration_seconds_sum{{{sel}}} {t.latency_sum:.3f}{ts}"


# --- history for backfills -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Traffic between ``start`` and ``end`` (unix seconds) for each version."""

    start: float
    end: float
    versions: dict[str, VersionTraffic]
    #: The exporter restarted at ``start``: every counter begins again at zero (a counter reset).
    reset: bool = False


def history_openmetrics(segments: Iterable[Segment], labels: dict[str, str], step: float = 60.0) -> str:
    """OpenMetrics for ``promtool tsdb create-blocks-from openmetrics``: one sample per ``step`` per series.

    Families are contiguous and each series' samples are in time order, as the OpenMetrics parser requires.
    """
    segments = sorted(segments, key=lambda s: s.start)
    versions = sorted({v for s in segments for v in s.versions})
    snapshots: list[tuple[float, dict[str, Totals]]] = []
    totals = {v: Totals() for v in versions}
    for seg in segments:
        if seg.reset:
            totals = {v: Totals() for v in versions}
        t = seg.start
        while t < seg.end:
            dt = min(step, seg.end - t)
            for v in versions:
                traffic = seg.versions.get(v)
                if traffic is not None:
                    totals[v].advance(traffic, dt)
            t += dt
            snapshots.append(
                (t, {v: Totals(x.requests, x.errors, x.latency_sum, list(x.buckets)) for v, x in totals.items()})
            )
    lines_by_series: dict[str, list[str]] = {}
    for ts, snap in snapshots:
        for line in exposition(snap, labels, timestamp=ts, openmetrics=True):
            series, rest = line.rsplit("} ", 1)
            lines_by_series.setdefault(series + "}", []).append(f"{series}}} {rest}")
    out = ["# TYPE http_requests counter"]
    out += [line for s, lines in lines_by_series.items() if s.startswith("http_requests_total") for line in lines]
    out.append("# TYPE http_request_duration_seconds histogram")
    out += [line for s, lines in lines_by_series.items() if s.startswith("http_request_duration") for line in lines]
    out.append("# EOF")
    return "\n".join(out) + "\n"


# --- live exporter -------------------------------------------------------------------------------------------


class TrafficModel:
    """Thread-safe live counters; ``update`` changes a version's traffic from now on."""

    def __init__(self, versions: dict[str, VersionTraffic], labels: dict[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._versions = dict(versions)
        self._totals = {v: Totals() for v in versions}
        self._last = time.time()
        self.labels = labels or {}

    def _advance(self) -> None:
        now = time.time()
        for v, traffic in self._versions.items():
            self._totals.setdefault(v, Totals()).advance(traffic, now - self._last)
        self._last = now

    def update(self, changes: dict[str, dict]) -> dict[str, dict]:
        with self._lock:
            self._advance()
            for version, settings in changes.items():
                current = asdict(self._versions.get(version, VersionTraffic()))
                self._versions[version] = VersionTraffic(**{**current, **settings})
            return self.settings()

    def settings(self) -> dict[str, dict]:
        return {v: asdict(t) for v, t in self._versions.items()}

    def render(self) -> str:
        with self._lock:
            self._advance()
            lines = ["# TYPE http_requests_total counter", *exposition(self._totals, self.labels)]
        return "\n".join(lines) + "\n"


def serve(model: TrafficModel, host: str, port: int) -> ThreadingHTTPServer:
    """``GET /metrics``, ``GET /config``, ``PUT /config`` with ``{"canary": {"error_ratio": 0.05}}``."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, model.render(), "text/plain; version=0.0.4")
            elif self.path == "/config":
                self._send(200, json.dumps(model.settings()))
            elif self.path == "/-/ready":
                self._send(200, "ok", "text/plain")
            else:
                self._send(404, '{"error": "not found"}')

        def do_PUT(self) -> None:
            if self.path != "/config":
                self._send(404, '{"error": "not found"}')
                return
            try:
                changes = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(200, json.dumps(model.update(changes)))
            except (ValueError, TypeError) as exc:
                self._send(400, json.dumps({"error": f"bad traffic settings: {exc}"}))

        do_POST = do_PUT

        def log_message(self, *args) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    """``python -m cqox_platform.slo.traffic PORT``: the stack's traffic exporter."""
    import sys

    port = int(sys.argv[1])
    model = TrafficModel({"stable": VersionTraffic(), "canary": VersionTraffic(rps=20.0)})
    server = serve(model, "127.0.0.1", port)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
