"""Grafana dashboards as code: SLOs, backups and canary rollouts, built with ``grafana-foundation-sdk``.

Every query is made from the platform's own sources, never from names copied by hand:

- SLOs from the SLO spec (``cqox_platform/slo/slos.yaml``): the SLI and the burn rate per window from the
  recording rules ``cqox_platform.slo.rules`` generates (``slo:error_ratio:rate<window>``), the error budget
  left over the SLO period from the gauge the error-budget sensor pushes (``cqox_platform.slo.burn``), the
  burn-rate thresholds from the page and ticket conditions of the alert rules;
- backups from the gauges the backup assets push (``cqox_platform.backup.verify.gauges``), their thresholds from
  the alerts on them (``cqox_platform/alerts/backup-alerts.yml``);
- canary rollouts from the canary policies (``cqox_platform/canary/policies``): the policy's own analysis
  queries for the stable and the canary version, and the spec's SLIs split by the version label.

The JSON ships in ``cqox_platform/deploy/grafana/`` and, wrapped in ConfigMaps labelled ``grafana_dashboard: "1"``
for the dashboard sidecar of Grafana's Helm chart, in ``cqox_platform/deploy/k8s/grafana-dashboards.yaml`` (the
``k8s_grafana_dashboards`` asset applies it). Both are rendered by ``cqox-platform dashboards render`` and a unit
test fails when they differ from what this module builds now, so an edit to the spec, a rule or a gauge cannot
leave a dashboard behind. The shipped files are built from the shipped spec and policies; an installation with a
spec of its own renders its own (``dashboards render --spec``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    GridPos,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
)

from cqox_platform.alerts import BACKUP_ALERT_RULES
from cqox_platform.backup.verify import gauges
from cqox_platform.canary.policy import POLICY_DIR, CanaryPolicy, load_policy
from cqox_platform.deploy.manifests import MANIFEST_DIR
from cqox_platform.errors import CqoxError
from cqox_platform.package_data import package_path
from cqox_platform.slo.burn import BUDGET_REMAINING_METRIC
from cqox_platform.slo.rules import PAGE, TICKET, WINDOWS, record_name
from cqox_platform.slo.spec import DEFAULT_SPEC, LatencySlo, RatioSlo, SloSpec, ThroughputSlo, load_spec

#: The dashboards as Grafana JSON models, one file per dashboard (``<uid>.json``).
DASHBOARD_DIR = package_path("cqox_platform.deploy", "grafana")
#: The same dashboards as ConfigMaps for the Grafana sidecar, rendered like every other manifest there.
CONFIGMAP_FILE = MANIFEST_DIR / "grafana-dashboards.yaml"
#: The label the sidecar of Grafana's Helm chart watches (its default ``sidecar.dashboards.label``/``labelValue``).
SIDECAR_LABEL = {"grafana_dashboard": "1"}
#: The folder the sidecar files them under when the chart sets ``sidecar.dashboards.folderAnnotation`` to this.
FOLDER_ANNOTATION = {"grafana_folder": "CQOx"}
#: The dashboards' Prometheus: a variable, so one JSON fits every Grafana whatever its data source is called.
#: Referred to as ``$datasource`` (Grafana takes both forms): ``${...}`` in a manifest reads as an unrendered
#: placeholder.
DATASOURCE_VARIABLE = "datasource"
_DATASOURCE = DataSourceRef(type_val="prometheus", uid="$" + DATASOURCE_VARIABLE)
#: Windows the SLI chart shows (the burn-rate chart shows every recorded window).
SLI_WINDOWS = ("5m", "1h", "1d", "3d")


class DashboardError(CqoxError):
    """A dashboard cannot be built from the platform's sources; the message names the source and what to change."""


# --- thresholds from the alert rules ----------------------------------------------------------------------------

_COMPARISON = re.compile(
    r"^(?P<age>time\(\) - )?(?P<metric>[a-z_:]+)(?P<selector>\{[^}]*\})? (?P<op>>|==) (?P<value>[0-9.* ]+)$"
)


@dataclass(frozen=True)
class AlertThreshold:
    """Where an alert on a pushed gauge fires: ``metric op value`` (``age``: on ``time() - metric``)."""

    alert: str
    severity: str
    metric: str
    value: float
    age: bool


def alert_thresholds(rules_file: Path = BACKUP_ALERT_RULES) -> dict[str, AlertThreshold]:
    """The alerts of ``rules_file`` that compare one gauge (or its age) with a constant, by alert name.

    The dashboards draw these as thresholds, so a target changed in the rules moves the line on the chart.
    """
    out = {}
    for group in yaml.safe_load(rules_file.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            match = _COMPARISON.match(" ".join(str(rule["expr"]).split()))
            if match is None:
                continue
            value = math.prod(float(part) for part in match["value"].split("*"))
            out[rule["alert"]] = AlertThreshold(
                rule["alert"], rule["labels"]["severity"], match["metric"], value, bool(match["age"])
            )
    return out


def _threshold(thresholds: dict[str, AlertThreshold], alert: str, metric: str, *, age: bool = False) -> float:
    found = thresholds.get(alert)
    if found is None or found.metric != metric or found.age != age:
        raise DashboardError(
            f"{BACKUP_ALERT_RULES}: alert {alert} no longer compares {'the age of ' if age else ''}{metric} with a "
            "constant; the backup dashboard draws its threshold from it: update cqox_platform/deploy/dashboards.py"
        )
    return found.value


# --- panels -----------------------------------------------------------------------------------------------------


def _steps(base: str, *steps: tuple[float, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color=base), *(Threshold(value=v, color=c) for v, c in sorted(steps))])
    )


def _target(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def _refs(targets: Sequence[tuple[str, str]]) -> list[prometheus.Dataquery]:
    return [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)]


class _Layout:
    """Panel ids and grid positions, assigned in order, so the JSON is the same on every render."""

    def __init__(self, builder: db.Dashboard) -> None:
        self.builder = builder
        self.next_id = 1
        self.y = 0
        self.x = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.y += self.row_height
        self.x, self.row_height = 0, 0
        self.builder.with_row(db.Row(title).id(self._id()).grid_pos(GridPos(h=1, w=24, x=0, y=self.y)))
        self.y += 1

    def add(self, panel: Any, width: int, height: int) -> None:
        if self.x + width > 24:
            self.y += self.row_height
            self.x, self.row_height = 0, 0
        panel.id(self._id()).datasource(_DATASOURCE).grid_pos(GridPos(h=height, w=width, x=self.x, y=self.y))
        self.builder.with_panel(panel)
        self.x += width
        self.row_height = max(self.row_height, height)


def _timeseries(
    title: str,
    description: str,
    targets: Sequence[tuple[str, str]],
    unit: str,
    thresholds: db.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).line_width(2).fill_opacity(10)
    for target in _refs(targets):
        panel.with_target(target)
    if thresholds is not None:
        panel.thresholds(thresholds).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    return panel


def _stat(
    title: str,
    description: str,
    targets: Sequence[tuple[str, str]],
    unit: str,
    thresholds: db.ThresholdsConfig,
    mappings: dict[str, tuple[str, str]] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .thresholds(thresholds)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel.mappings([ValueMap(options={k: ValueMappingResult(text=t, color=c) for k, (t, c) in mappings.items()})])
    for target in _refs(targets):
        panel.with_target(target)
    return panel


def _dashboard(uid: str, title: str, description: str, time_from: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["cqox"])
        .editable()
        .refresh("1m")
        .time(time_from, "now")
        .timezone("utc")
        .with_variable(
            db.DatasourceVariable(DATASOURCE_VARIABLE)
            .label("Prometheus")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Prometheus", value="prometheus"))
        )
    )


# --- SLOs -------------------------------------------------------------------------------------------------------


def _slo_selector(spec: SloSpec, name: str) -> str:
    # The labels generate_rules puts on every recorded series (service and SLO).
    return f'{{service="{spec.service}",slo="{name}"}}'


def burn_thresholds(spec: SloSpec) -> db.ThresholdsConfig:
    """The burn-rate factors at which the generated alerts ticket (orange) and page (red)."""
    ticket = min(a.factor(spec.period_days) for a in TICKET)
    page = min(a.factor(spec.period_days) for a in PAGE)
    return _steps("green", (ticket, "orange"), (page, "red"))


def slo_dashboard(spec: SloSpec) -> db.Dashboard:
    """Per SLO of the spec: the SLI per window against the objective, the budget left, the burn per window."""
    builder = _dashboard(
        "cqox-slos",
        f"CQOx SLOs: {spec.service}",
        f"SLIs, error budget and burn rates of {spec.service} from its SLO spec ({spec.period_days}-day period). "
        "Generated by cqox-platform dashboards render; edit the spec, not this dashboard.",
        "now-24h",
    )
    layout = _Layout(builder)
    for slo in spec.budgeted:
        sel = _slo_selector(spec, slo.name)
        budget = 1 - slo.objective
        layout.row(f"{slo.name}: objective {slo.objective:.6g}")
        layout.add(
            _timeseries(
                "SLI",
                f"{slo.description} Good share over each window: 1 - the recorded error ratio "
                f"({record_name('<window>')}).",
                [(f"1 - {record_name(w)}{sel}", w) for w in SLI_WINDOWS],
                "percentunit",
                _steps("red", (slo.objective, "green")),
            ).decimals(4),
            10,
            8,
        )
        layout.add(
            _stat(
                f"Error budget remaining ({spec.period_days} d)",
                f"Share of the {spec.period_days}-day error budget ({budget:.6g} of events) not yet spent, as the "
                f"error-budget sensor measures it every few minutes ({BUDGET_REMAINING_METRIC}); below 0 it is "
                "overspent.",
                [(f"{BUDGET_REMAINING_METRIC}{sel}", "remaining")],
                "percentunit",
                _steps("red", (0.0, "green")),
            ).decimals(1),
            4,
            8,
        )
        layout.add(
            _timeseries(
                "Burn rate per window",
                "Error ratio over the window divided by the budget: 1 spends the budget in exactly one period. "
                "Dashed lines: the factors at which the burn-rate alerts ticket and page (both windows of a pair "
                "must be above).",
                [(f"{record_name(w)}{sel} / {budget:.10g}", w) for w in WINDOWS],
                "x",
                burn_thresholds(spec),
            ),
            10,
            8,
        )
    for slo in spec.slos:
        if isinstance(slo, ThroughputSlo):
            layout.row(f"{slo.name}: at least {slo.minimum_rps:g} requests/s")
            layout.add(
                _timeseries(
                    "Requests per second",
                    f"{slo.description} Red below the minimum, green from the target.",
                    [(spec.throughput_query("5m"), "requests/s")],
                    "reqps",
                    _steps("red", (slo.minimum_rps, "orange"), (slo.target_rps, "green")),
                ),
                24,
                8,
            )
    return builder


# --- backups ----------------------------------------------------------------------------------------------------


def backup_dashboard(rules_file: Path = BACKUP_ALERT_RULES) -> db.Dashboard:
    """RPO, last backup, recovery window, drill RTO history, DR lag and the WAL archiver, per cluster."""
    t = alert_thresholds(rules_file)
    g = gauges
    builder = _dashboard(
        "cqox-backups",
        "CQOx backups",
        "Can we recover, and to when? The gauges the backup assets push (per cluster system_id), with the "
        "thresholds of the backup alerts. Generated by cqox-platform dashboards render.",
        "now-7d",
    )
    layout = _Layout(builder)
    by = "{{system_id}}"
    rpo_ticket = _threshold(t, "CqoxWalRpoAboveTarget", g.WAL_RPO_SECONDS)
    rpo_page = _threshold(t, "CqoxWalRpoCritical", g.WAL_RPO_SECONDS)
    backup_age = _threshold(t, "CqoxBaseBackupTooOld", g.BACKUP_LAST_SUCCESS, age=True)
    layout.row("Recovery point and recovery window")
    layout.add(
        _stat(
            "RPO",
            "Writes not yet archived, as time: what a restore now would lose (wal_archive_status, every 15 min).",
            [(g.WAL_RPO_SECONDS, by)],
            "s",
            _steps("green", (rpo_ticket, "orange"), (rpo_page, "red")),
        ),
        6,
        6,
    )
    layout.add(
        _stat(
            "Last base backup",
            "Age of the newest successful base backup.",
            [(f"time() - {g.BACKUP_LAST_SUCCESS}", by)],
            "s",
            _steps("green", (backup_age, "red")),
        ),
        6,
        6,
    )
    window_start = f"max by (system_id) ({g.RECOVERY_WINDOW_START})"
    window_end = f"(time() - max by (system_id) ({g.WAL_RPO_SECONDS}))"
    layout.add(
        _stat(
            "Recovery window",
            "How far back a point-in-time restore reaches: from the oldest retained backup's end to now minus "
            "the RPO (as `backup info` measures it).",
            [(f"{window_end} - {window_start}", by)],
            "s",
            _steps("red", (0.0, "green")),
        ),
        6,
        6,
    )
    layout.add(
        _stat(
            "Recoverable from / to",
            "The recovery window's earliest and latest recoverable instants.",
            [(f"{window_start} * 1000", f"from {by}"), (f"{window_end} * 1000", f"to {by}")],
            "dateTimeAsIso",
            _steps("blue"),
        ).graph_mode(common.BigValueGraphMode.NONE),
        6,
        6,
    )
    layout.add(
        _timeseries(
            "RPO history",
            "The RPO at each measurement, with the alert thresholds (ticket, page).",
            [(g.WAL_RPO_SECONDS, by)],
            "s",
            _steps("green", (rpo_ticket, "orange"), (rpo_page, "red")),
        ),
        12,
        8,
    )
    layout.add(
        _timeseries(
            "Unarchived WAL",
            "WAL written on the current timeline that the archive does not hold yet, in bytes.",
            [(g.WAL_RPO_BYTES, by)],
            "bytes",
        ),
        12,
        8,
    )
    layout.row("Base backups")
    layout.add(
        _timeseries(
            "Base backup duration",
            "How long each base backup took, start to the end of its upload.",
            [(g.BACKUP_DURATION, by)],
            "s",
        ).show_points(common.VisibilityMode.ALWAYS),
        12,
        8,
    )
    layout.add(
        _timeseries(
            "Base backup size",
            "The database's size and what its newest backup stores (compressed and encrypted).",
            [(g.BACKUP_DATABASE_BYTES, f"database {by}"), (g.BACKUP_STORED_BYTES, f"stored {by}")],
            "bytes",
        ),
        12,
        8,
    )
    rto = _threshold(t, "CqoxRestoreDrillRtoAboveTarget", g.DRILL_RTO_SECONDS)
    drill_age = _threshold(t, "CqoxRestoreDrillStale", g.DRILL_LAST_TIMESTAMP, age=True)
    layout.row("Restore drills")
    layout.add(
        _timeseries(
            "Drill RTO history",
            "Time each restore drill took to restore and prove the data, against the RTO target.",
            [(g.DRILL_RTO_SECONDS, by)],
            "s",
            _steps("green", (rto, "red")),
        ).show_points(common.VisibilityMode.ALWAYS),
        12,
        8,
    )
    layout.add(
        _stat(
            "Last drill",
            "Whether the newest restore drill proved its backup restorable.",
            [(g.DRILL_SUCCESS, by)],
            "none",
            _steps("red", (1.0, "green")),
            {"0": ("failed", "red"), "1": ("passed", "green")},
        ).graph_mode(common.BigValueGraphMode.NONE),
        6,
        8,
    )
    layout.add(
        _stat(
            "Last drill age",
            "Time since the newest restore drill finished.",
            [(f"time() - {g.DRILL_LAST_TIMESTAMP}", by)],
            "s",
            _steps("green", (drill_age, "orange")),
        ),
        6,
        8,
    )
    dr_lag = _threshold(t, "CqoxBackupDrLagHigh", g.DR_LAG_SECONDS)
    layout.row("DR copy")
    layout.add(
        _timeseries(
            "DR lag",
            "How far the DR bucket trails the primary archive (0 when every object is copied and verified).",
            [(g.DR_LAG_SECONDS, by)],
            "s",
            _steps("green", (dr_lag, "orange")),
        ),
        16,
        8,
    )
    layout.add(
        _stat(
            "Objects waiting for the DR copy",
            "Objects of the primary archive not (or not verifiably) in the DR bucket at the last copy.",
            [(g.DR_PENDING_OBJECTS, by)],
            "none",
            _steps("green", (1.0, "orange")),
        ),
        8,
        8,
    )
    dr_window = _threshold(t, "CqoxDrRecoveryWindowBehindRpo", g.RECOVERY_WINDOW_LATEST, age=True)
    by_copy = "{{copy}} {{system_id}}"
    layout.add(
        _timeseries(
            "Recovery window end behind now, by copy",
            "How far each copy's latest recoverable instant (the end of its newest archived WAL on the current "
            "timeline) trails now; the DR copy pages past the line. A copy that could not be read is pushed as 0 "
            "and shows as far behind.",
            [(f"time() - {g.RECOVERY_WINDOW_LATEST}", by_copy)],
            "s",
            _steps("green", (dr_window, "red")),
        ),
        16,
        8,
    )
    layout.add(
        _stat(
            "Recoverable from / to, by copy",
            "Each copy's earliest (start of its oldest kept, verified backup) and latest recoverable instant.",
            [
                (f"{g.RECOVERY_WINDOW_EARLIEST} * 1000", f"from {by_copy}"),
                (f"{g.RECOVERY_WINDOW_LATEST} * 1000", f"to {by_copy}"),
            ],
            "dateTimeAsIso",
            _steps("blue"),
        ).graph_mode(common.BigValueGraphMode.NONE),
        8,
        8,
    )
    layout.row("WAL archiver")
    layout.add(
        _timeseries(
            "Archiver failures",
            "Failed archive attempts since the statistics were reset (pg_stat_archiver.failed_count).",
            [(g.WAL_ARCHIVE_FAILED_COUNT, by)],
            "none",
        ),
        10,
        8,
    )
    layout.add(
        _stat(
            "Archiving",
            "Whether wal-push is failing now (the last failure is newer than the last success).",
            [(g.WAL_ARCHIVE_FAILING, by)],
            "none",
            _steps("green", (1.0, "red")),
            {"0": ("archiving", "green"), "1": ("failing", "red")},
        ).graph_mode(common.BigValueGraphMode.NONE),
        4,
        8,
    )
    layout.add(
        _stat(
            "WAL gaps",
            "Segments missing between the oldest backup and now: no restore replays across a gap.",
            [(g.WAL_ARCHIVE_GAPS, by)],
            "none",
            _steps("green", (1.0, "red")),
        ),
        4,
        8,
    )
    layout.add(
        _timeseries(
            "Newest archived segment age",
            "Age of the newest segment in the archive (an idle cluster switches WAL only when there is some).",
            [(g.WAL_NEWEST_ARCHIVED_AGE, by)],
            "s",
        ),
        6,
        8,
    )
    return builder


# --- canary -----------------------------------------------------------------------------------------------------


def _version_sli(spec: SloSpec, slo: RatioSlo | LatencySlo, label: str, version: str, window: str) -> str:
    scoped = spec.model_copy(update={"selector": {**spec.selector, label: version}})
    return f"1 - ({scoped.error_ratio_query(slo, window)})"


def canary_dashboard(spec: SloSpec, policies: Iterable[CanaryPolicy]) -> db.Dashboard:
    """Per canary policy (the rollouts of one service): each analysis metric and each SLI for both versions.

    The queries are the policy's own, over its analysis interval, so the chart shows what the decision saw; a
    rollout is a time range (``canary status`` prints when it started and ended).
    """
    from cqox_platform.slo.versions import splittable

    builder = _dashboard(
        "cqox-canary",
        "CQOx canary rollouts",
        "Per canary policy: the analysis metrics and the SLIs of the stable and the canary version over the "
        "policy's analysis interval. Set the time range to a rollout's (cqox-platform canary status). "
        "Generated by cqox-platform dashboards render.",
        "now-6h",
    )
    layout = _Layout(builder)
    for policy in policies:
        p = policy.prometheus
        versions = (p.stable_version, p.canary_version)
        layout.row(f"{policy.service}: rollouts by policy version {policy.version}")
        layout.add(
            _timeseries(
                "Requests per analysis interval",
                f"Requests each version served over {policy.window}; fewer than {policy.min_requests} canary "
                "requests hold the step (insufficient evidence).",
                [(policy.render(policy.requests_query, v), v) for v in versions],
                "short",
            ),
            8,
            8,
        )
        for metric in policy.metrics:
            layout.add(
                _timeseries(
                    metric.name,
                    f"{metric.description} (the policy's analysis query over {policy.window}).",
                    [(policy.render(metric.query, v), v) for v in versions],
                    "none",
                    _steps("green", (metric.max, "red")) if metric.max is not None else None,
                ),
                8,
                8,
            )
        if policy.service != spec.service:
            continue
        for slo in splittable(spec):
            label = spec.metrics.version_label
            layout.add(
                _timeseries(
                    f"SLI {slo.name} by version",
                    f"{slo.description} Over {policy.window} per version, against the objective.",
                    [(_version_sli(spec, slo, label, v, policy.window), v) for v in versions],
                    "percentunit",
                    _steps("red", (slo.objective, "green")),
                ).decimals(4),
                8,
                8,
            )
    return builder


# --- rendering and shipping -------------------------------------------------------------------------------------


def to_json(builder: db.Dashboard) -> dict[str, Any]:
    """The dashboard's JSON model as plain data (the SDK's encoder, then parsed back)."""
    return json.loads(JSONEncoder().encode(builder.build()))


def dumps(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def build_all(spec: SloSpec, policies: Iterable[CanaryPolicy], rules_file: Path = BACKUP_ALERT_RULES) -> list[dict]:
    """Every dashboard's JSON model, in a fixed order."""
    return [
        to_json(slo_dashboard(spec)),
        to_json(backup_dashboard(rules_file)),
        to_json(canary_dashboard(spec, policies)),
    ]


def load_policies(directory: Path = POLICY_DIR) -> list[CanaryPolicy]:
    """Every canary policy of ``directory``, by file name."""
    return [load_policy(path) for path in sorted(directory.glob("*.yaml"))]


def shipped_models(spec_file: Path = DEFAULT_SPEC) -> list[dict]:
    """The dashboards of the shipped sources (or of another SLO spec): what ``dashboards render`` writes."""
    return build_all(load_spec(spec_file), load_policies())


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so the dashboards in the ConfigMaps read as the JSON they are."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def configmaps(models: Sequence[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """One ConfigMap per dashboard, labelled for the Grafana sidecar."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"grafana-dashboard-{m['uid']}",
                "namespace": namespace,
                "labels": {**SIDECAR_LABEL, "app.kubernetes.io/part-of": "cqox"},
                "annotations": dict(FOLDER_ANNOTATION),
            },
            "data": {f"{m['uid']}.json": dumps(m)},
        }
        for m in models
    ]


def configmaps_file(models: Sequence[dict[str, Any]]) -> str:
    """The manifest file: the ConfigMaps with the ``${NAMESPACE}`` placeholder every manifest there has, and each
    literal ``$`` of the dashboards (Grafana's ``$datasource``) written ``$$`` for the renderer."""
    header = (
        '# Grafana dashboards for the sidecar of Grafana\'s Helm chart (label grafana_dashboard: "1"). Generated by\n'
        "# `cqox-platform dashboards render` from cqox_platform/deploy/dashboards.py: do not edit by hand.\n"
    )
    docs = [yaml.dump(cm, Dumper=_LiteralDumper, sort_keys=False, width=1000) for cm in configmaps(models, "@NS@")]
    text = "---\n".join(docs).replace("$", "$$").replace("@NS@", "${NAMESPACE}")
    return header + text


def rendered_files(models: Sequence[dict[str, Any]]) -> dict[Path, str]:
    """What ships, by path: one JSON file per dashboard and the ConfigMaps."""
    files = {DASHBOARD_DIR / f"{m['uid']}.json": dumps(m) for m in models}
    files[CONFIGMAP_FILE] = configmaps_file(models)
    return files


def stale_files(files: dict[Path, str], directory: Path = DASHBOARD_DIR) -> list[Path]:
    """The files whose content differs from ``files`` (missing ones included), and dashboards in ``directory``
    that are no longer built (a renamed dashboard would otherwise ship twice)."""
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    extra = [p for p in sorted(directory.glob("*.json")) if p not in files] if directory.is_dir() else []
    return stale + extra


def expressions(model: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL expression of a dashboard as ``(panel title, expr)``."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in model.get("panels", [])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
