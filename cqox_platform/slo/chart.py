"""A dependency-free SVG chart for the SLO report: error-budget burn-down and latency against targets.

Drawn from the ``slo_reports`` history (not Prometheus), so it covers days Prometheus has already forgotten.
Embedded in the asset's Markdown metadata as a data URI.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
W, H, PAD = 760, 250, 48


def panel(
    y0: int,
    title: str,
    series: dict[str, list[tuple[int, float]]],
    n_days: int,
    lo: float,
    hi: float,
    refs: dict[str, float],
    unit: str,
) -> list[str]:
    def x(i: int) -> float:
        return PAD + (W - 2 * PAD) * (i / max(n_days - 1, 1))

    def y(v: float) -> float:
        v = min(max(v, lo), hi)
        return y0 + H - PAD / 2 - (H - PAD) * ((v - lo) / (hi - lo) if hi > lo else 0.5)

    out = [
        f'<text x="{PAD}" y="{y0 + 16}" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{PAD}" y1="{y(lo)}" x2="{W - PAD}" y2="{y(lo)}" stroke="#999"/>',
        f'<line x1="{PAD}" y1="{y(lo)}" x2="{PAD}" y2="{y(hi)}" stroke="#999"/>',
        f'<text x="4" y="{y(hi) + 4}" font-size="10">{hi:g}{unit}</text>',
        f'<text x="4" y="{y(lo) + 4}" font-size="10">{lo:g}{unit}</text>',
    ]
    for i, (name, value) in enumerate(refs.items()):
        color = COLORS[i % len(COLORS)]
        out.append(
            f'<line x1="{PAD}" y1="{y(value):.1f}" x2="{W - PAD}" y2="{y(value):.1f}" stroke="{color}" '
            f'stroke-dasharray="5,4" opacity="0.6"/>'
        )
        out.append(
            f'<text x="{W - PAD}" y="{y(value) - 3:.1f}" font-size="10" text-anchor="end" fill="{color}">'
            f"{escape(name)}</text>"
        )
    for i, (name, points) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if points:
            path = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in points)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
            out += [f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"/>' for d, v in points]
        out.append(
            f'<text x="{PAD + 10 + 130 * i}" y="{y0 + H - 4}" font-size="11" fill="{color}">{escape(name)}</text>'
        )
    return out


def render_svg(history: list[dict[str, Any]], latency_targets: dict[str, float]) -> str:
    days = sorted({r["day"] for r in history})
    index = {d: i for i, d in enumerate(days)}
    budget: dict[str, list[tuple[int, float]]] = {}
    latency: dict[str, list[tuple[int, float]]] = {"p50": [], "p95": [], "p99": []}
    seen_latency: set = set()
    for r in history:
        if r["budget_consumed_30d"] is not None:
            budget.setdefault(r["slo"], []).append((index[r["day"]], 1 - r["budget_consumed_30d"]))
        if r["kind"] in ("latency", "quantile") and r["day"] not in seen_latency and r["p50"] is not None:
            seen_latency.add(r["day"])
            for q in ("p50", "p95", "p99"):
                if r[q] is not None:
                    latency[q].append((index[r["day"]], r[q] * 1000))
    span = f"{days[0]} to {days[-1]}" if days else "no days yet"
    top = max([v for pts in latency.values() for _d, v in pts] + [t * 1000 for t in latency_targets.values()] + [1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{2 * H + 20}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
    ]
    parts += panel(
        0,
        f"Error budget remaining, rolling 30 days ({span})",
        budget,
        len(days),
        -0.5,
        1.0,
        {"budget exhausted": 0.0},
        "",
    )
    parts += panel(
        H + 20,
        "Daily latency percentiles (ms) against targets",
        latency,
        len(days),
        0,
        round(top * 1.15, 1),
        {f"{k} target": v * 1000 for k, v in latency_targets.items()},
        "",
    )
    parts.append("</svg>")
    return "".join(parts)


def svg_markdown(svg: str, alt: str = "SLO chart") -> str:
    return f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
