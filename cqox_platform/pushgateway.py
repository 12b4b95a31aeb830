"""Push gauges to the Prometheus Pushgateway in the text exposition format (no client library needed)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import requests

from cqox_platform.errors import CqoxError

Sample = tuple[str, dict[str, str], float]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items()
    )
    return "{" + ",".join(escaped) + "}"


def render(samples: Iterable[Sample], help_text: dict[str, str] | None = None) -> str:
    lines: list[str] = []
    typed: set[str] = set()
    for name, labels, value in samples:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if name not in typed:
            typed.add(name)
            if help_text and name in help_text:
                lines.append(f"# HELP {name} {help_text[name]}")
            lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name}{_labels(labels)} {float(value)!r}")
    return "\n".join(lines) + "\n"


def push(
    url: str,
    job: str,
    grouping: dict[str, str],
    samples: Iterable[Sample],
    *,
    replace: bool = False,
    timeout: float = 10,
) -> int:
    """POST (update these metric names) or PUT (replace the group) samples; returns how many were sent."""
    body = render(list(samples))
    path = "/".join(f"{k}/{v}" for k, v in grouping.items())
    target = f"{url.rstrip('/')}/metrics/job/{job}" + (f"/{path}" if path else "")
    try:
        response = (requests.put if replace else requests.post)(target, data=body, timeout=timeout)
    except requests.RequestException as exc:
        raise CqoxError(f"Pushgateway at {url} is unreachable ({type(exc).__name__}).") from None
    if response.status_code >= 300:
        raise CqoxError(f"Pushgateway at {url} refused the metrics: HTTP {response.status_code} {response.text[:200]}")
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))
