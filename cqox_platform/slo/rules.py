"""Prometheus recording and alerting rules from the SLO spec: multiwindow, multi-burn-rate (SRE Workbook).

Every budgeted SLO gets its error ratio recorded over 5m, 30m, 1h, 2h, 6h, 1d and 3d, and two alerts:
``SLOErrorBudgetBurnPage`` (2 % of the period's budget in 1 h, checked with a 5 m window; or 5 % in 6 h with
30 m) and ``SLOErrorBudgetBurnTicket`` (10 % in 1 d with 2 h; or 10 % in 3 d with 6 h). For a 30-day period
the factors are the Workbook's 14.4, 6, 3 and 1; other periods scale them. The rules are checked with
``promtool check rules`` and unit-tested with ``promtool test rules`` on generated series before anyone loads
them: each alert fires when the burn crosses its factor, and not before its ``for`` has elapsed.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cqox_platform.errors import RuleValidationError
from cqox_platform.slo.spec import LatencySlo, QuantileSlo, RatioSlo, SloSpec, ThresholdSlo

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
_HOURS = {"5m": 5 / 60, "30m": 0.5, "1h": 1, "2h": 2, "6h": 6, "1d": 24, "3d": 72}


@dataclass(frozen=True)
class BurnAlert:
    """One multiwindow condition: ``budget_fraction`` of the period's budget spent within ``long``."""

    severity: str
    long: str
    short: str
    budget_fraction: float
    for_: str

    def factor(self, period_days: int) -> float:
        return round(self.budget_fraction * period_days * 24 / _HOURS[self.long], 4)


PAGE = (BurnAlert("page", "1h", "5m", 0.02, "2m"), BurnAlert("page", "6h", "30m", 0.05, "2m"))
TICKET = (BurnAlert("ticket", "1d", "2h", 0.10, "15m"), BurnAlert("ticket", "3d", "6h", 0.10, "15m"))
ALERT_NAMES = {"page": "SLOErrorBudgetBurnPage", "ticket": "SLOErrorBudgetBurnTicket"}
#: Fires when an SLO's SLI series is absent (as Pyrra's ``SLOMetricAbsent``): without its series a burn-rate rule
#: evaluates to nothing, which reads as "no burn", so a service that stopped being scraped would never page.
ABSENT_ALERT = "SLOMetricAbsent"
ABSENT_SEVERITY = "page"
#: Long enough to ride out a restart of the service or of Prometheus, short against the 1h page window.
ABSENT_FOR = "5m"


def record_name(window: str) -> str:
    return f"slo:error_ratio:rate{window}"


def _labels(spec: SloSpec, slo) -> dict[str, str]:
    return {"service": spec.service, "slo": slo.name}


def _selector(spec: SloSpec, slo) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in _labels(spec, slo).items()) + "}"


def sli_series_query(spec: SloSpec, slo) -> str:
    """The series an SLO's SLI needs to exist, summed to one unlabelled series (so ``absent`` adds no labels).

    Ratio SLOs need the request counter; latency SLOs the histogram bucket at their threshold (a threshold that
    is no bucket boundary is as blind as a missing histogram); quantile SLOs the histogram's buckets; OpenSLO
    queries are taken whole (window 5m).
    """
    m = spec.metrics
    if isinstance(slo, ThresholdSlo):
        return f"sum({slo.query})"
    if isinstance(slo, QuantileSlo):
        return f"sum({m.duration_seconds}_bucket{spec.matchers()})"
    if isinstance(slo, RatioSlo):
        if slo.total_query:
            return f"sum({slo.total_query.replace('$window', '5m')})"
        return f"sum({m.requests_total}{spec.matchers()})"
    le = f'le="{float(slo.threshold_seconds)!r}"'
    return f"sum({m.duration_seconds}_bucket{spec.matchers(le)})"


def absent_alert(spec: SloSpec, slo) -> dict[str, Any]:
    return {
        "alert": ABSENT_ALERT,
        "expr": f"absent({sli_series_query(spec, slo)})",
        "for": ABSENT_FOR,
        "labels": {**_labels(spec, slo), "severity": ABSENT_SEVERITY},
        "annotations": _absent_annotations(spec, slo),
    }


def _absent_annotations(spec: SloSpec, slo) -> dict[str, str]:
    return {
        "summary": f"{spec.service} SLO {slo.name} has no SLI data: its burn-rate alerts are blind",
        "description": f"No series for {sli_series_query(spec, slo)} for {ABSENT_FOR}: is the service scraped "
        "(Prometheus targets), and do the metric and label names in the SLO spec match what it exports?",
    }


def _annotations(spec: SloSpec, slo, severity: str, pair: tuple[BurnAlert, BurnAlert]) -> dict[str, str]:
    factors = " or ".join(f"{a.factor(spec.period_days):g}x over {a.long}/{a.short}" for a in pair)
    return {
        "summary": f"{spec.service} SLO {slo.name} is burning its error budget ({severity})",
        "description": f"Error ratio above {factors} the budget of {1 - slo.objective:.6g} "
        f"({spec.period_days}-day SLO of {slo.objective:.6g}).",
    }


def generate_rules(spec: SloSpec) -> dict[str, Any]:
    """The rule file (as a dict ready for YAML): one recording group and one alerting group."""
    records, alerts = [], []
    for slo in spec.budgeted:
        for window in WINDOWS:
            records.append(
                {
                    "record": record_name(window),
                    "expr": spec.error_ratio_query(slo, window),
                    "labels": _labels(spec, slo),
                }
            )
        budget = 1 - slo.objective
        for severity, pair in (("page", PAGE), ("ticket", TICKET)):
            clauses = []
            for a in pair:
                threshold = f"{a.factor(spec.period_days) * budget:.10g}"
                sel = _selector(spec, slo)
                clauses.append(
                    f"({record_name(a.long)}{sel} > {threshold} and {record_name(a.short)}{sel} > {threshold})"
                )
            alerts.append(
                {
                    "alert": ALERT_NAMES[severity],
                    "expr": " or ".join(clauses),
                    "for": pair[0].for_,
                    "labels": {**_labels(spec, slo), "severity": severity},
                    "annotations": _annotations(spec, slo, severity, pair),
                }
            )
        alerts.append(absent_alert(spec, slo))
    return {
        "groups": [
            {"name": f"{spec.service}-slo-recording", "interval": "30s", "rules": records},
            {"name": f"{spec.service}-slo-alerts", "interval": "30s", "rules": alerts},
        ]
    }


def unfireable_alerts(spec: SloSpec) -> list[str]:
    """Burn-rate conditions that can never fire: their threshold (factor x budget) is an error ratio of 100 % or
    more. A low objective (a request-based p50 at 0.5) makes a 14.4x page impossible; the person reading the
    spec must be told, not left believing the SLO pages (``kind: quantile`` is the way to page on a median)."""
    out = []
    for slo in spec.budgeted:
        budget = 1 - slo.objective
        for alert in (*PAGE, *TICKET):
            threshold = alert.factor(spec.period_days) * budget
            if threshold >= 1:
                out.append(
                    f"{slo.name}: the {alert.severity} alert over {alert.long}/{alert.short} needs an error ratio of "
                    f"{threshold:.3g} ({alert.factor(spec.period_days):g}x the budget {budget:.3g}) and can never "
                    f"fire; raise the objective or alert on this SLO another way"
                )
    return out


def _fires(spec: SloSpec, slo, severity: str, error_ratio: float) -> bool:
    pair = PAGE if severity == "page" else TICKET
    return any(error_ratio > a.factor(spec.period_days) * (1 - slo.objective) for a in pair)


def _scenario_series(spec: SloSpec, scenario: str) -> tuple[list[dict[str, str]], dict[str, float]]:
    """Input series at 100 requests/s (6000 per 1-minute step) and the true error ratio of every SLO."""
    m, sel = spec.metrics, dict(spec.selector)

    def series(name: str, labels: dict[str, str], per_step: int) -> dict[str, str]:
        body = ",".join(f'{k}="{v}"' for k, v in {**sel, **labels}.items())
        return {"series": f"{name}{{{body}}}", "values": f"0+{per_step}x300"}

    ok, bad = {"healthy": (6000, 0), "outage": (3000, 3000)}[scenario]
    fast = {"healthy": 6000, "outage": 0}[scenario]  # requests under every latency threshold
    out = [series(m.requests_total, {m.code_label: "200"}, ok), series(m.requests_total, {m.code_label: "500"}, bad)]
    thresholds = sorted({s.threshold_seconds for s in spec.budgeted if isinstance(s, LatencySlo | QuantileSlo)})
    # And a finite bucket above every threshold, so a quantile past the last threshold is estimated past it:
    # Prometheus answers a quantile in the +Inf bucket with the largest finite boundary.
    for t in [*thresholds, *([2.0 * thresholds[-1]] if thresholds else [])]:
        out.append(series(f"{m.duration_seconds}_bucket", {"le": repr(float(t))}, fast))
    out.append(series(f"{m.duration_seconds}_bucket", {"le": "+Inf"}, 6000))
    out.append(series(f"{m.duration_seconds}_count", {}, 6000))
    truth = {}
    for slo in spec.budgeted:
        if isinstance(slo, ThresholdSlo):
            continue
        if isinstance(slo, RatioSlo):
            truth[slo.name] = bad / 6000 if re.fullmatch(slo.bad_codes, "500") else 0.0
        elif isinstance(slo, QuantileSlo):
            truth[slo.name] = 0.0 if fast else 1.0  # every minute's quantile within its threshold, or none
        else:
            truth[slo.name] = 1 - fast / 6000
    return out, truth


def generate_rule_tests(spec: SloSpec, rules_file: str) -> dict[str, Any]:
    """``promtool test rules`` cases: healthy traffic never alerts; an outage pages after 2m and tickets after 15m.

    Only SLOs defined over the spec's own metrics are exercised (OpenSLO queries are opaque to the generator).
    """
    tests = []
    for scenario in ("healthy", "outage"):
        series, truth = _scenario_series(spec, scenario)
        cases = []
        for severity, not_yet, firing in (("page", "2m", "5m"), ("ticket", "10m", "20m")):
            for at, may_fire in ((not_yet, False), (firing, True)):
                expected = []
                for slo in spec.budgeted:
                    if (isinstance(slo, RatioSlo) and slo.bad_query) or isinstance(slo, ThresholdSlo):
                        continue
                    if may_fire and _fires(spec, slo, severity, truth[slo.name]):
                        pair = PAGE if severity == "page" else TICKET
                        expected.append(
                            {
                                "exp_labels": {**_labels(spec, slo), "severity": severity},
                                "exp_annotations": _annotations(spec, slo, severity, pair),
                            }
                        )
                cases.append({"eval_time": at, "alertname": ALERT_NAMES[severity], "exp_alerts": expected})
        if scenario == "healthy" and _only_own_metrics(spec):
            # Healthy traffic has every SLI series: no absent-data alert.
            cases.append({"eval_time": "10m", "alertname": ABSENT_ALERT, "exp_alerts": []})
        tests.append({"name": scenario, "interval": "1m", "input_series": series, "alert_rule_test": cases})
    tests.append(_no_data_test(spec))
    return {"rule_files": [rules_file], "evaluation_interval": "30s", "tests": tests}


def _only_own_metrics(spec: SloSpec) -> bool:
    return not any((isinstance(s, RatioSlo) and s.total_query) or isinstance(s, ThresholdSlo) for s in spec.budgeted)


def _no_data_test(spec: SloSpec) -> dict[str, Any]:
    """No SLI series at all (the service is not scraped): every SLO's absent-data alert pages after its ``for``."""
    expected = [
        {
            "exp_labels": {**_labels(spec, slo), "severity": ABSENT_SEVERITY},
            "exp_annotations": _absent_annotations(spec, slo),
        }
        for slo in spec.budgeted
    ]
    return {
        "name": "no SLI data",
        "interval": "1m",
        "input_series": [{"series": "cqox_unrelated_series", "values": "1x20"}],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": ABSENT_ALERT, "exp_alerts": []},
            {"eval_time": "7m", "alertname": ABSENT_ALERT, "exp_alerts": expected},
        ],
    }


def _promtool(*args: str, what: str) -> str:
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuleValidationError(f"{what} failed:\n{(proc.stdout + proc.stderr).strip()[-4000:]}")
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class ValidatedRules:
    text: str
    recording_rules: int
    alerting_rules: int
    tests: int
    check_output: str
    test_output: str
    #: Conditions that can never fire (``unfireable_alerts``): flagged, since the rules are valid PromQL anyway.
    unfireable: tuple[str, ...] = ()


def validate_rules(spec: SloSpec) -> ValidatedRules:
    """Generate, ``promtool check rules`` and ``promtool test rules``; raise with promtool's words on failure."""
    rules = generate_rules(spec)
    text = yaml.safe_dump(rules, sort_keys=False, width=200)
    with tempfile.TemporaryDirectory(prefix="cqox-rules-") as tmp:
        rules_path = Path(tmp) / "slo-rules.yml"
        rules_path.write_text(text)
        tests = generate_rule_tests(spec, rules_path.name)
        tests_path = Path(tmp) / "slo-rules.test.yml"
        tests_path.write_text(yaml.safe_dump(tests, sort_keys=False, width=200))
        check = _promtool("check", "rules", str(rules_path), what="promtool check rules")
        test = _promtool("test", "rules", str(tests_path), what="promtool test rules")
    return ValidatedRules(
        text=text,
        recording_rules=len(rules["groups"][0]["rules"]),
        alerting_rules=len(rules["groups"][1]["rules"]),
        tests=sum(len(t["alert_rule_test"]) for t in tests["tests"]),
        check_output=check.strip(),
        test_output=test.strip(),
        unfireable=tuple(unfireable_alerts(spec)),
    )
