"""SLOs as assets (group ``slo``): alerting rules generated from the spec, validated, tested and loaded."""

from pathlib import Path

import dagster as dg

from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.slo.rules import ALERT_NAMES, PAGE, TICKET, validate_rules
from cqox_platform.slo.spec import load_spec

GROUP = "slo"
DEFAULT_SPEC = str(Path(__file__).resolve().parents[1] / "slo" / "slos.yaml")
RULES_FILE = "cqox-slo-rules.yml"


class SloRulesConfig(dg.Config):
    spec_path: str = DEFAULT_SPEC


@dg.asset(
    group_name=GROUP,
    kinds={"prometheus"},
    description="Multiwindow multi-burn-rate recording and alerting rules from slo/slos.yaml, checked and unit-"
    "tested with promtool, then loaded into Prometheus through its lifecycle API.",
)
def slo_alert_rules(
    context: dg.AssetExecutionContext, config: SloRulesConfig, prometheus: PrometheusResource
) -> dg.MaterializeResult:
    spec = load_spec(Path(config.spec_path))
    validated = validate_rules(spec)
    context.log.info(
        f"promtool: {validated.recording_rules} recording and {validated.alerting_rules} alerting "
        f"rules valid; {validated.tests} alert test cases passed"
    )
    groups = prometheus.install_rules(RULES_FILE, validated.text)
    factors = ["| alert | long / short window | budget spent | burn factor |", "|---|---|---|---|"]
    for severity, pair in (("page", PAGE), ("ticket", TICKET)):
        for a in pair:
            factors.append(
                f"| {ALERT_NAMES[severity]} | {a.long} / {a.short} | {a.budget_fraction:.0%} | "
                f"{a.factor(spec.period_days):g}x |"
            )
    return dg.MaterializeResult(
        metadata={
            "spec": config.spec_path,
            "slos": dg.MetadataValue.json([s.name for s in spec.budgeted]),
            "recording_rules": validated.recording_rules,
            "alerting_rules": validated.alerting_rules,
            "promtool_test_cases": validated.tests,
            "burn_factors": dg.MetadataValue.md("\n".join(factors)),
            "loaded_groups": dg.MetadataValue.json(groups),
            "rules": dg.MetadataValue.md(f"```yaml\n{validated.text}```"),
        }
    )


defs = dg.Definitions(assets=[slo_alert_rules])
