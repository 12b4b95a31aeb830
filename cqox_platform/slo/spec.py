"""The SLO spec: a small YAML format (``cqox_platform/slo/slos.yaml``) or OpenSLO v1 ratio SLOs, validated by pydantic.

Errors name the file, the line and the field, because the person fixing a spec is reading the YAML, not a
pydantic location tuple. Every SLI is turned into PromQL here, once, so rules, reports and sensors agree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cqox_platform.errors import SloSpecError
from cqox_platform.package_data import package_path
from cqox_platform.settings import Settings, get_settings

#: The SLO file shipped with the platform; the ``slo_spec`` setting (``CQOX_SLO_SPEC``) points elsewhere.
DEFAULT_SPEC = package_path("cqox_platform.slo", "slos.yaml")


def spec_path(settings: Settings | None = None) -> Path:
    """The one SLO spec of this installation: alert rules, reports, the burn-rate sensor and the canary gate all
    read it, so alerts and budgets can never come from different files."""
    return (settings or get_settings()).slo_spec or DEFAULT_SPEC


_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricNames(_Strict):
    requests_total: str = "http_requests_total"
    duration_seconds: str = "http_request_duration_seconds"
    code_label: str = "code"
    version_label: str = "version"


class _SloBase(_Strict):
    name: str
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use lowercase letters, digits and '-', at most 63 characters")
        return value


class RatioSlo(_SloBase):
    """Good events over all events; bad = responses whose code matches ``bad_codes``, or explicit queries."""

    kind: Literal["ratio"] = "ratio"
    objective: float = Field(gt=0, lt=1)
    bad_codes: str = "5.."
    #: OpenSLO input carries its own PromQL (rates over the placeholder window ``[$window]``).
    bad_query: str | None = None
    total_query: str | None = None


class LatencySlo(_SloBase):
    """The share of requests answered within ``threshold_seconds`` (a histogram bucket boundary)."""

    kind: Literal["latency"]
    objective: float = Field(gt=0, lt=1)
    threshold_seconds: float = Field(gt=0)


class QuantileSlo(_SloBase):
    """A latency quantile (``quantile: 0.5``, the median) within ``threshold_seconds`` in ``objective`` of the
    minutes: time slices, as OpenSLO's ``Timeslices`` budgeting.

    "Half of all requests within 100 ms" counted in requests has an objective of 0.5, so a budget of half the
    requests: even a total outage burns it at 2x, and the 14.4x and 6x pages can never fire. Counted in minutes
    whose median was slower than the threshold, the budget is 1 - ``objective`` of the minutes, and the same
    multiwindow burn-rate alerts page. A minute without requests has no quantile: neither good nor bad.
    """

    kind: Literal["quantile"]
    objective: float = Field(gt=0, lt=1)
    quantile: float = Field(gt=0, lt=1)
    threshold_seconds: float = Field(gt=0)


class ThresholdSlo(_SloBase):
    """OpenSLO threshold SLO: a query's value must satisfy ``op value`` in ``objective`` of the minutes."""

    kind: Literal["threshold"]
    objective: float = Field(gt=0, lt=1)
    query: str
    op: Literal["lt", "lte", "gt", "gte"]
    value: float


class ThroughputSlo(_SloBase):
    """Request rate: reported against its minimum and target; not an error-budget SLO."""

    kind: Literal["throughput"]
    minimum_rps: float = Field(gt=0)
    target_rps: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> ThroughputSlo:
        if self.target_rps < self.minimum_rps:
            raise ValueError("target_rps must be at least minimum_rps")
        return self


Slo = Annotated[RatioSlo | LatencySlo | QuantileSlo | ThresholdSlo | ThroughputSlo, Field(discriminator="kind")]
BudgetedSlo = RatioSlo | LatencySlo | QuantileSlo | ThresholdSlo
_PROM_OP = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
#: The rate window of a quantile SLO's per-minute value: the shortest burn-rate window, wide enough for a few
#: scrapes at any usual scrape interval, so a minute's quantile never depends on a single scrape.
QUANTILE_RATE_WINDOW = "5m"


class SloSpec(_Strict):
    service: str
    period_days: int = Field(default=30, ge=1, le=365)
    metrics: MetricNames = MetricNames()
    selector: dict[str, str] = {}
    slos: list[Slo] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SloSpec:
        names = [s.name for s in self.slos]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate SLO names: {', '.join(duplicates)}")
        return self

    @property
    def budgeted(self) -> list[BudgetedSlo]:
        """The SLOs with an error budget (everything but throughput)."""
        return [s for s in self.slos if not isinstance(s, ThroughputSlo)]

    # --- PromQL ---------------------------------------------------------------------------------------------

    def matchers(self, extra: str = "") -> str:
        """The spec's label selector, plus ``extra`` (``code=~"5.."``), as ``{...}``."""
        parts = [f'{k}="{v}"' for k, v in sorted(self.selector.items())]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}"

    def event_queries(self, slo: RatioSlo | LatencySlo, window: str, fn: str = "rate") -> tuple[str, str]:
        """(bad, total) events over ``window``: per second with ``rate``, counts with ``increase``.

        A missing bad series counts as zero only while the requests carry the code label at all: a service that
        never failed has no 5xx series, but a spec naming the wrong ``code_label`` must read as "no data", not as
        a perfect SLI (``or vector(0)`` used to hide exactly that). A missing total leaves the ratio without data.
        """
        m = self.metrics
        if isinstance(slo, RatioSlo):
            code = f'{m.code_label}=~"{slo.bad_codes}"'
            labelled = f'{m.code_label}!=""'
            bad = (
                f"(sum({fn}({m.requests_total}{self.matchers(code)}[{window}])) or "
                f"0 * sum({fn}({m.requests_total}{self.matchers(labelled)}[{window}])))"
            )
            return bad, self.throughput_query(window, fn)
        le = f'le="{_prom_float(slo.threshold_seconds)}"'
        total = f"sum({fn}({m.duration_seconds}_count{self.matchers()}[{window}]))"
        good = f"sum({fn}({m.duration_seconds}_bucket{self.matchers(le)}[{window}]))"
        return f"({total} - {good})", total

    def quantile_query(self, slo: QuantileSlo, window: str = QUANTILE_RATE_WINDOW) -> str:
        """The latency quantile of ``slo`` over ``window``, from the spec's histogram (one series)."""
        buckets = f"{self.metrics.duration_seconds}_bucket{self.matchers()}"
        return f"histogram_quantile({slo.quantile!r}, sum by (le) (rate({buckets}[{window}])))"

    def error_ratio_query(self, slo: BudgetedSlo, window: str) -> str:
        """PromQL for the share of bad events over ``window`` (e.g. ``5m``), by nothing: one series."""
        if isinstance(slo, ThresholdSlo):
            # Time slices of one minute: the share of minutes in which the query broke its threshold.
            good = f"(({slo.query}) {_PROM_OP[slo.op]} bool {slo.value!r})"
            return f"1 - avg_over_time({good}[{window}:1m])"
        if isinstance(slo, QuantileSlo):
            # Time slices of one minute. ``>= 0`` drops the NaN of a minute without requests before ``bool``
            # would turn it into a bad minute: an idle service is not slow.
            good = f"(({self.quantile_query(slo)}) >= 0) <= bool {_prom_float(slo.threshold_seconds)}"
            return f"1 - avg_over_time(({good})[{window}:1m])"
        if isinstance(slo, RatioSlo) and slo.bad_query and slo.total_query:
            bad, total = (q.replace("$window", window) for q in (slo.bad_query, slo.total_query))
            return f"({bad}) / ({total})"
        bad, total = self.event_queries(slo, window)
        return f"{bad} / {total}"

    def throughput_query(self, window: str, fn: str = "rate") -> str:
        """All requests over ``window``: requests per second with ``rate``, a count with ``increase``."""
        return f"sum({fn}({self.metrics.requests_total}{self.matchers()}[{window}]))"


def _prom_float(value: float) -> str:
    """How Prometheus client libraries print a bucket boundary (0.1, 0.5, 1.0)."""
    return repr(float(value))


# --- loading with file/line/field errors ---------------------------------------------------------------------


#: Pydantic puts the discriminator's branch into error locations; the YAML has no such level.
_KIND_TAGS = {"ratio", "latency", "threshold", "throughput"}


def _yaml_path(loc: tuple) -> tuple:
    return tuple(part for part in loc if part not in _KIND_TAGS)


def _node_at(node: yaml.Node, loc: tuple) -> yaml.Node:
    """The deepest YAML node along a pydantic error location (stops where the location leaves the YAML)."""
    for part in _yaml_path(loc):
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            if child is None:
                key = next((k for k, _v in node.value if k.value == part), None)
                return key or node
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node


def _field(loc: tuple) -> str:
    out = ""
    for part in _yaml_path(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_spec(text: str, source: str = "<string>") -> SloSpec:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise SloSpecError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise SloSpecError(f"{source}: the file is empty.")
    data = yaml.safe_load(text)
    if isinstance(data, dict) and data.get("apiVersion") == "openslo/v1":
        raise SloSpecError(f"{source}: an OpenSLO document; load it with load_openslo().")
    try:
        return SloSpec.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            node = _node_at(root, tuple(err["loc"]))
            messages.append(
                f"{source}, line {node.start_mark.line + 1}, field {_field(tuple(err['loc']))}: {err['msg']}"
            )
        raise SloSpecError("invalid SLO spec:\n  " + "\n  ".join(messages)) from None


def load_spec(path: Path) -> SloSpec:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SloSpecError(f"{path}: cannot read the SLO spec ({exc.strerror}).") from None
    return parse_spec(text, str(path))


def _windowed(query: str) -> str:
    return query if "$window" in query else query.replace("[5m]", "[$window]")


def load_openslo(path: Path, *, service: str | None = None, period_days: int = 30) -> SloSpec:
    """OpenSLO v1 ``kind: SLO`` documents with Prometheus ``ratioMetric`` or ``thresholdMetric`` indicators.

    Ratio queries may use ``[$window]``; OpenSLO itself has no window placeholder, so a query without one is used
    with ``[5m]`` replaced by each window. A threshold SLO (objective ``op``/``value``/``target``) becomes a
    one-minute time-slice SLO: the share of minutes in which the query met its threshold.
    """
    text = Path(path).read_text()
    slos = []
    for index, doc in enumerate(yaml.safe_load_all(text)):
        if not doc:
            continue
        where = f"{path}, document {index + 1}"
        if doc.get("apiVersion") != "openslo/v1" or doc.get("kind") != "SLO":
            raise SloSpecError(f"{where}: expected apiVersion openslo/v1 and kind SLO.")
        spec = doc.get("spec", {})
        indicator = (spec.get("indicator") or {}).get("spec", {})
        ratio = indicator.get("ratioMetric")
        if ratio is None and "thresholdMetric" in indicator:
            try:
                objective = spec["objectives"][0]
                slos.append(
                    {
                        "name": doc["metadata"]["name"],
                        "description": spec.get("description", ""),
                        "kind": "threshold",
                        "objective": float(objective["target"]),
                        "query": indicator["thresholdMetric"]["metricSource"]["spec"]["query"],
                        "op": objective["op"],
                        "value": float(objective["value"]),
                    }
                )
            except (KeyError, TypeError, IndexError, ValueError) as exc:
                raise SloSpecError(f"{where}: missing or malformed threshold field near {exc!s}.") from None
            continue
        if ratio is None:
            raise SloSpecError(f"{where}, field spec.indicator.spec: needs ratioMetric or thresholdMetric.")
        try:
            total = ratio["total"]["metricSource"]["spec"]["query"]
            bad_src = ratio.get("bad") or ratio.get("good")
            query = bad_src["metricSource"]["spec"]["query"]
            target = float(spec["objectives"][0]["target"])
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise SloSpecError(f"{where}: missing or malformed field near {exc!s}.") from None
        if "bad" not in ratio:  # good/total: bad = total - good
            query = f"({total}) - ({query})"
        slos.append(
            {
                "name": doc["metadata"]["name"],
                "description": spec.get("description", ""),
                "kind": "ratio",
                "objective": target,
                "bad_query": _windowed(query),
                "total_query": _windowed(total),
            }
        )
    return parse_spec(
        yaml.safe_dump({"service": service or "openslo", "period_days": period_days, "slos": slos}), str(path)
    )
