"""Per-version SLIs and the budget a release spent (issue 16 item 6): the arithmetic and the queries asked."""

from __future__ import annotations

import pytest

from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec
from cqox_platform.slo.versions import VersionSli, per_version, splittable

SPEC = load_spec(DEFAULT_SPEC)


def test_budget_consumed_is_bad_events_over_the_periods_budget() -> None:
    # 99.99 %: a period of 1,000,000 requests allows 100 bad ones; a canary with 25 bad spent a quarter.
    row = VersionSli("canary", "availability", bad=25, total=5000, objective=0.9999, period_total=1_000_000)
    assert row.error_ratio == pytest.approx(0.005) and row.budget_consumed == pytest.approx(0.25)
    assert VersionSli("canary", "availability", None, 10, 0.9999, 100).budget_consumed is None
    assert VersionSli("canary", "availability", 0, 0, 0.9999, None).error_ratio is None


def test_each_splittable_slo_is_asked_per_version_over_the_window() -> None:
    asked: list[str] = []

    def query(expr: str, at=None) -> list[dict]:
        asked.append(expr)
        return [{"value": [0, "4" if 'code=~"5.."' in expr else "1000"]}]

    rows = per_version(SPEC, ["canary", "stable"], 1800, query)
    names = [s.name for s in splittable(SPEC)]
    assert [(r.version, r.slo) for r in rows] == [(v, n) for v in ("canary", "stable") for n in names]
    availability = next(r for r in rows if r.version == "canary" and r.slo == "availability")
    assert availability.bad == 4 and availability.total == 1000
    assert any('version="canary"' in q and "[1800s]" in q for q in asked)
    assert any("[30d]" in q and "version=" not in q for q in asked)  # the period's total: the whole service
