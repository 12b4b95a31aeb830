"""The local stack's alert receiver: what would have paged, for a person and for the tests to see.

Alertmanager reaches it through the same receiver configs production uses; only the URLs differ:

- ``POST /v2/enqueue``: the PagerDuty Events API v2 enqueue endpoint. Events are validated as PagerDuty does
  (``routing_key`` of 32 characters, ``event_action`` trigger/acknowledge/resolve, a ``payload`` with
  ``summary``, ``source`` and ``severity`` on trigger) and answered like it (202 ``{"status": "success",
  "dedup_key": ...}``, 400 ``{"status": "invalid event", ...}``). The routing key must be the stack's
  integration key (``secrets/pagerduty-routing-key``), as PagerDuty refuses keys it does not know.
- ``POST /webhook/<name>``: a generic webhook (Alertmanager's ``webhook_configs``, ticket systems, chat).
- ``POST /heartbeat/<name>?within=<seconds>``: a dead man's switch, the stand-in for a dead-man's-snitch service
  (Alertmanager's Watchdog notifications arrive here). The receiver itself notices when a heartbeat it has heard
  stays silent for longer than ``within`` seconds and raises a page (a ``deadman`` record, ``trigger``), once per
  silence; the next heartbeat resolves it. A real snitch service has the allowance configured on its side; the
  stand-in reads it from the URL the routing posts to.
- ``GET /v1/received?since=<unix seconds>``: what was received, oldest first (``cqox-platform alerts received``).
- ``GET /v1/heartbeats``: the heartbeats being watched, when each was last heard and whether it is paging.

Everything accepted is appended to ``received.jsonl``, except heartbeats themselves (one a minute, for ever):
only the pages and resolutions they cause. The routing key is stored only as a short SHA-256 fingerprint: the
file is for reading what paged, not a second place the key lives.

The watched heartbeats are kept in ``heartbeats.json``, so a restarted receiver goes on watching them: a
heartbeat is never forgotten because its watcher restarted. Its own start counts as the last heartbeat heard
(the services that send them start after it and need a moment to send the first).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_BODY = 512 * 1024  # PagerDuty's limit on one event


def key_fingerprint(routing_key: str) -> str:
    """What the stored record says about the key: enough to tell two keys apart, useless to send events."""
    return hashlib.sha256(routing_key.encode()).hexdigest()[:12]


def validate_event(event: Any, routing_key: str) -> list[str]:
    """The problems PagerDuty would report for this Events v2 body (empty when it would accept it)."""
    if not isinstance(event, dict):
        return ["the body is not a JSON object"]
    errors = []
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be a 32-character string")
    elif not hmac.compare_digest(key, routing_key):
        errors.append("'routing_key' is not the integration key of this service")
    action = event.get("event_action")
    if action not in EVENT_ACTIONS:
        errors.append(f"'event_action' must be one of {list(EVENT_ACTIONS)}")
    if action in ("acknowledge", "resolve") and not event.get("dedup_key"):
        errors.append(f"'dedup_key' is required to {action}")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is required to trigger")
        else:
            for name in ("summary", "source"):
                if not isinstance(payload.get(name), str) or not payload[name]:
                    errors.append(f"'payload.{name}' is required")
            if len(str(payload.get("summary", ""))) > 1024:
                errors.append("'payload.summary' is longer than 1024 characters")
            if payload.get("severity") not in SEVERITIES:
                errors.append(f"'payload.severity' must be one of {list(SEVERITIES)}")
    return errors


class ReceivedStore:
    """``received.jsonl``: one JSON object per accepted request, appended under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock, self.path.open("a") as handle:
            handle.write(line)

    def since(self, since: float = 0.0) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self._lock:
            lines = self.path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return [r for r in records if r["received_at"] >= since]


def pagerduty_record(event: dict[str, Any]) -> dict[str, Any]:
    """The stored form of an accepted event: everything but the routing key, which becomes a fingerprint."""
    body = {k: v for k, v in event.items() if k != "routing_key"}
    return {
        "kind": "pagerduty",
        "name": "events-v2",
        "routing_key_fingerprint": key_fingerprint(event["routing_key"]),
        "event_action": event["event_action"],
        "dedup_key": event.get("dedup_key"),
        "body": body,
    }


#: How often the receiver looks for silent heartbeats: the page is late by at most this much.
HEARTBEAT_CHECK_SECONDS = 1.0


class HeartbeatWatch:
    """The dead man's switch: heartbeats heard, and a page (then a resolution) recorded when one goes silent."""

    def __init__(self, store: ReceivedStore, path: Path | None) -> None:
        self.store, self.path = store, path
        self._lock = threading.Lock()
        self._beats: dict[str, dict[str, Any]] = {}
        started = time.time()
        if path is not None and path.exists():
            for name, beat in json.loads(path.read_text()).items():
                self._beats[name] = {**beat, "last_at": started}

    def _save(self) -> None:
        """Written atomically, so a receiver killed mid-write still knows what to watch when it comes back."""
        if self.path is None:
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(self._beats, handle, sort_keys=True)
        os.replace(tmp, self.path)

    def heard(self, name: str, within: float) -> None:
        now = time.time()
        with self._lock:
            previous = self._beats.get(name, {})
            if previous.get("paging"):
                self.store.append(self._record(name, "resolve", now, previous, f"heartbeat {name!r} is back"))
            self._beats[name] = {"last_at": now, "within_seconds": within, "paging": False}
            self._save()

    def check(self, now: float | None = None) -> None:
        """Page for every heartbeat silent for longer than its allowance that is not paging already."""
        now = time.time() if now is None else now
        with self._lock:
            for name, beat in self._beats.items():
                silent = now - beat["last_at"]
                if beat["paging"] or silent <= beat["within_seconds"]:
                    continue
                summary = (
                    f"dead man's switch: no heartbeat {name!r} for {silent:.0f} s (expected within "
                    f"{beat['within_seconds']:g} s): Prometheus or Alertmanager, or the path from them to the "
                    "receivers, is down and nothing else can page about it"
                )
                self.store.append(self._record(name, "trigger", now, beat, summary))
                beat["paging"] = True
                self._save()

    @staticmethod
    def _record(name: str, action: str, now: float, beat: dict[str, Any], summary: str) -> dict[str, Any]:
        return {
            "received_at": now,
            "kind": "deadman",
            "name": name,
            "event_action": action,
            "dedup_key": f"deadman-{name}",
            "body": {
                "summary": summary,
                "last_heartbeat_at": beat.get("last_at"),
                "within": beat.get("within_seconds"),
            },
        }

    def state(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(beat) for name, beat in self._beats.items()}

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_CHECK_SECONDS):
            self.check()


def _within(query: str) -> float:
    """The heartbeat's allowance from ``?within=<seconds>``: required and positive, or no switch is armed."""
    values = parse_qs(query).get("within", [])
    try:
        within = float(values[0])
    except (IndexError, ValueError):
        within = 0.0
    if not (math.isfinite(within) and within > 0):
        raise ValueError("'within' must be a positive number of seconds (how long a silence may last)")
    return within


class ReceiverServer(ThreadingHTTPServer):
    """The HTTP server, whose ``shutdown`` also stops the heartbeat watch running beside it."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.stopping = threading.Event()

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


def serve(
    store: ReceivedStore, routing_key: str, host: str, port: int, heartbeats_path: Path | None = None
) -> ReceiverServer:
    """Serve on ``host:port`` in a thread; ``shutdown()`` also stops the heartbeat watch."""
    watch = HeartbeatWatch(store, heartbeats_path)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError(f"the body is larger than {MAX_BODY} bytes")
            return json.loads(self.rfile.read(length) or b"null")

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/-/ready":
                self._send(200, {"status": "ready"})
            elif url.path == "/v1/received":
                try:
                    since = float(parse_qs(url.query).get("since", ["0"])[0])
                except ValueError:
                    self._send(400, {"error": "'since' must be unix seconds"})
                    return
                self._send(200, store.since(since))
            elif url.path == "/v1/heartbeats":
                self._send(200, watch.state())
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            path = url.path
            try:
                body = self._body()
            except ValueError as exc:
                self._send(400, {"status": "invalid event", "message": "Event object is invalid", "errors": [str(exc)]})
                return
            if path == "/v2/enqueue":
                errors = validate_event(body, routing_key)
                if errors:
                    self._send(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})
                    return
                record = pagerduty_record(body)
                dedup_key = record["dedup_key"] or hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
                record["dedup_key"] = dedup_key
                store.append({"received_at": time.time(), **record})
                self._send(202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key})
            elif path.startswith("/heartbeat/") and len(path) > len("/heartbeat/"):
                try:
                    within = _within(url.query)
                except ValueError as exc:
                    self._send(400, {"error": str(exc)})
                    return
                watch.heard(path[len("/heartbeat/") :], within)
                self._send(200, {"status": "ok"})
            elif path.startswith("/webhook/") and len(path) > len("/webhook/"):
                name = path[len("/webhook/") :]
                store.append({"received_at": time.time(), "kind": "webhook", "name": name, "body": body})
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, *args) -> None:
            return

    server = ReceiverServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=watch.run, args=(server.stopping,), daemon=True).start()
    return server


def main() -> None:
    """``python -m cqox_platform.stack.alert_receiver PORT STORE_FILE ROUTING_KEY_FILE``; the watched heartbeats
    are kept next to the store (``heartbeats.json``)."""
    port, store_path, key_file = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    server = serve(
        ReceivedStore(store_path),
        key_file.read_text().strip(),
        "127.0.0.1",
        port,
        heartbeats_path=store_path.with_name("heartbeats.json"),
    )
    try:
        threading.Event().wait()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
