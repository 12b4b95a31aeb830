"""Small SVG line charts for asset metadata (backup sizes, RTO history), drawn with the SLO chart's panel."""

from __future__ import annotations

from cqox_platform.slo.chart import PAD, H, W, panel, svg_markdown

__all__ = ["render_lines_svg", "svg_markdown"]


def render_lines_svg(title: str, series: dict[str, list[float | None]], unit: str = "", refs=None) -> str:
    """One panel; ``series`` values are in run order (None = no value), ``refs`` are dashed target lines."""
    n = max((len(v) for v in series.values()), default=0)
    values = [v for vs in series.values() for v in vs if v is not None] + list((refs or {}).values())
    hi = max(values, default=1.0) * 1.1 or 1.0
    points = {name: [(i, v) for i, v in enumerate(vs) if v is not None] for name, vs in series.items()}
    body = panel(0, title, points, max(n, 2), 0.0, hi, refs or {}, unit)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + PAD // 2}" font-family="sans-serif">'
        + "".join(body)
        + "</svg>"
    )
