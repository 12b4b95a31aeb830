"""`cqox-platform alerts received | silence add | silence expire | silence list`: the alerting loop by hand.

``received`` shows what the local stack's receiver got (what would have paged or opened a ticket);
``silence`` manages maintenance silences through Alertmanager's API (TLS and basic auth from `stack env`).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click

import cqox_platform.cli.context as context
from cqox_platform.cli.group import ErrorGroup
from cqox_platform.cli.json_output import echo_json, json_option

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d`` or combinations (``1h30m``)."""
    parts = re.fullmatch(r"((\d+)[smhd])+", text.strip())
    if not parts:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 2h or 1d")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", text)))


def parse_since(text: str, now: float | None = None) -> float:
    """A duration back from now (``10m``) or an ISO 8601 time (``2026-01-02T03:04:05Z``), as unix seconds."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text).total_seconds()
    except click.BadParameter:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (10m, 2h) nor an ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def summarize(record: dict) -> dict:
    """One received request as a row: when, where, what (alert names, summary), which dedup key."""
    body = record.get("body") or {}
    if record["kind"] == "pagerduty":
        what = (body.get("payload") or {}).get("summary", "")
        action = record["event_action"]
    elif record["kind"] == "deadman":  # raised by the receiver itself: a heartbeat went silent, or came back
        what, action = body.get("summary", ""), record["event_action"]
    else:
        alerts = body.get("alerts", []) if isinstance(body, dict) else []
        names = sorted({a.get("labels", {}).get("alertname", "?") for a in alerts})
        what = f"{len(alerts)} alert(s): {', '.join(names)}" if alerts else json.dumps(body)[:80]
        action = body.get("status", "") if isinstance(body, dict) else ""
    return {
        "received_at": datetime.fromtimestamp(record["received_at"], UTC).isoformat(timespec="seconds"),
        "receiver": f"{record['kind']}/{record['name']}",
        "action": action,
        "what": what,
        "dedup_key": record.get("dedup_key") or (body.get("groupKey") if isinstance(body, dict) else None),
    }


_ALERTS_EXAMPLES = """
\b
Examples:
  # what paged in the last ten minutes
  cqox-platform alerts received --since 10m
  # silence the archiver alert for a planned S3 maintenance
  cqox-platform alerts silence add alertname=CqoxPostgresArchiverFailing --duration 2h --comment "S3 maintenance"
  # the silences in force
  cqox-platform alerts silence list
"""


@click.group("alerts", cls=ErrorGroup, epilog=_ALERTS_EXAMPLES)
def alerts() -> None:
    """What paged, and maintenance silences."""


#: ``alerts received --json`` and ``alerts silence list --json``: raised when a reader could trip over a change.
RECEIVED_SCHEMA_VERSION = 1
SILENCES_SCHEMA_VERSION = 1


def received_json(records: list[dict[str, Any]], since: float) -> dict[str, Any]:
    """What ``alerts received --json`` prints: the receiver's records as stored, oldest first."""
    return {"schema_version": RECEIVED_SCHEMA_VERSION, "since": since, "received": records}


def silences_json(silences: list[dict[str, Any]], show_all: bool) -> dict[str, Any]:
    """What ``alerts silence list --json`` prints: Alertmanager's silence objects (API v2) as it returns them."""
    return {"schema_version": SILENCES_SCHEMA_VERSION, "all": show_all, "silences": silences}


@alerts.command("received")
@click.option("--since", default=None, help="Only what arrived after this: a duration back (10m, 2h) or ISO time.")
@json_option
def alerts_received(since: str | None, as_json: bool) -> None:
    """List what the local stack's alert receiver got (PagerDuty events and webhook posts), oldest first."""
    after = parse_since(since) if since else 0.0
    records = context.alert_receiver().received(after)
    if as_json:
        echo_json(received_json(records, after))
        return
    if not records:
        click.echo("nothing received" + (f" since {since}" if since else ""))
        return
    from cqox_platform.markdown import table

    rows = [summarize(r) for r in records]
    click.echo(table(["received at", "receiver", "action", "what", "dedup key"], [list(r.values()) for r in rows]))


@alerts.group("silence", cls=ErrorGroup)
def silence() -> None:
    """Maintenance silences in Alertmanager."""


@silence.command("add")
@click.argument("matchers", nargs=-1, required=True)
@click.option("--duration", default="2h", show_default=True, help="How long it lasts (30m, 2h, 1d).")
@click.option("--comment", required=True, help="Why (shown to whoever is on call).")
@click.option("--author", default="cqox-platform", show_default=True)
def silence_add(matchers: tuple[str, ...], duration: str, comment: str, author: str) -> None:
    """Silence alerts matching every MATCHER (name=value, name!=value, name=~regex); prints the silence id."""
    from cqox_platform.alerts.client import Matcher

    silence_id = context.alertmanager().add_silence(
        [Matcher.parse(m) for m in matchers], parse_duration(duration), comment, author
    )
    click.echo(silence_id)


@silence.command("expire")
@click.argument("silence_ids", nargs=-1, required=True)
def silence_expire(silence_ids: tuple[str, ...]) -> None:
    """End silences now."""
    client = context.alertmanager()
    for silence_id in silence_ids:
        client.expire_silence(silence_id)
        click.echo(f"expired {silence_id}")


@silence.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also expired and pending silences.")
@json_option
def silence_list(show_all: bool, as_json: bool) -> None:
    """Active silences (id, matchers, until, author, comment)."""
    found = context.alertmanager().silences(None if show_all else "active")
    if as_json:
        echo_json(silences_json(found, show_all))
        return
    from cqox_platform.markdown import table

    def matchers(s: dict) -> str:
        ops = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}
        return ", ".join(f"{m['name']}{ops[(m['isRegex'], m.get('isEqual', True))]}{m['value']}" for m in s["matchers"])

    rows = [[s["id"], s["status"]["state"], matchers(s), s["endsAt"], s["createdBy"], s["comment"]] for s in found]
    click.echo(table(["id", "state", "matchers", "ends", "author", "comment"], rows) if rows else "no silences")
