"""What Prometheus scrapes besides itself, the Pushgateway and the traffic exporter: every service of the stack.

One job per service (the job name is the ``service`` label the alerts carry), verified TLS wherever the service
has a certificate:

- ``postgres``: the PostgreSQL exporters, one target per node (label ``node``: ``single`` or ``nodeN``);
- ``patroni``, ``haproxy``, ``etcd`` (``--ha`` only): Patroni's REST ``/metrics`` on each node, HAProxy's
  Prometheus exporter on its stats port, etcd's metrics-only listener (plain HTTP on loopback, see
  ``stack.etcd``);
- ``openbao``: ``/v1/sys/metrics`` (telemetry without a token, see ``stack.openbao``);
- ``alertmanager``: its own metrics, with the same basic auth Prometheus sends alerts with;
- ``kube-apiserver``: as ``cqox-prometheus`` in group ``system:monitoring`` (``stack.kube.pki``), which may read
  ``/metrics`` and nothing else; only the request and storage series are kept;
- ``blackbox``: the prober itself, and through it ``tls-expiry`` (a TLS handshake with every HTTPS endpoint,
  for ``probe_ssl_earliest_cert_expiry``) and ``openbao-health`` (``/v1/sys/health``: 503 means sealed).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.config import StackConfig
from cqox_platform.stack.etcd import NODE_COUNT
from cqox_platform.stack.kube.pki import ensure_kube_pki

#: The API server's series worth keeping: request rates and latencies, storage latency, the process.
KUBE_APISERVER_METRICS = (
    "apiserver_request_total|apiserver_request_duration_seconds_(count|sum)|apiserver_current_inflight_requests"
    "|etcd_request_duration_seconds_(count|sum)|apiserver_storage_objects|process_.+"
)


def _local(port: int) -> str:
    return f"127.0.0.1:{port}"


def scrape_jobs(stack: StackConfig, *, alertmanager_user: str, alertmanager_password_file: Path) -> list[dict]:
    ports = stack.ports
    ca = str(tls_files(stack.tls_dir).ca_cert)
    tls = {"scheme": "https", "tls_config": {"ca_file": ca, "min_version": "TLS13"}}
    blackbox = _local(ports["blackbox_exporter"])
    nodes = range(1, NODE_COUNT + 1) if stack.ha else range(1, 2)
    kube = ensure_kube_pki(stack.tls_dir)  # the monitoring identity exists before Prometheus loads its config

    https_endpoints = [
        ("openbao", _local(ports["openbao"])),
        ("alertmanager", _local(ports["alertmanager"])),
        ("kube-apiserver", _local(ports["kube_apiserver"])),
        *(("patroni", _local(ports[f"patroni{i}"])) for i in nodes if stack.ha),
    ]

    jobs: list[dict] = [
        {
            "job_name": "postgres",
            **tls,
            # `node` names the PostgreSQL node the exporter watches (Patroni's member name on an HA stack).
            "static_configs": [
                {
                    "targets": [_local(ports[f"postgres_exporter{i}"])],
                    "labels": {"node": f"node{i}" if stack.ha else "single"},
                }
                for i in nodes
            ],
        },
        {
            "job_name": "openbao",
            **tls,
            "metrics_path": "/v1/sys/metrics",
            "params": {"format": ["prometheus"]},
            "static_configs": [{"targets": [_local(ports["openbao"])]}],
        },
        {
            "job_name": "alertmanager",
            **tls,
            "basic_auth": {"username": alertmanager_user, "password_file": str(alertmanager_password_file)},
            "static_configs": [{"targets": [_local(ports["alertmanager"])]}],
        },
        {
            "job_name": "kube-apiserver",
            # Its /metrics is large and costly to render; once a minute is enough for what the alerts read.
            "scrape_interval": "60s",
            "scheme": "https",
            "tls_config": {
                "ca_file": str(kube.ca_cert),
                "cert_file": str(kube.monitoring.cert),
                "key_file": str(kube.monitoring.key),
                "min_version": "TLS13",
            },
            "static_configs": [{"targets": [_local(ports["kube_apiserver"])]}],
            "metric_relabel_configs": [
                {"source_labels": ["__name__"], "regex": KUBE_APISERVER_METRICS, "action": "keep"}
            ],
        },
        {"job_name": "blackbox", **tls, "static_configs": [{"targets": [blackbox]}]},
        {
            "job_name": "tls-expiry",
            **tls,
            "metrics_path": "/probe",
            "params": {"module": ["tls_expiry"]},
            "static_configs": [
                {"targets": [address], "labels": {"service": service}} for service, address in https_endpoints
            ],
            "relabel_configs": _probe_relabel(blackbox),
        },
        {
            "job_name": "openbao-health",
            **tls,
            "metrics_path": "/probe",
            "params": {"module": ["openbao_health"]},
            "static_configs": [
                {"targets": [f"https://{_local(ports['openbao'])}/v1/sys/health"], "labels": {"service": "openbao"}}
            ],
            "relabel_configs": _probe_relabel(blackbox),
        },
    ]
    if stack.ha:
        jobs += [
            {
                "job_name": "patroni",
                **tls,
                "static_configs": [{"targets": [_local(ports[f"patroni{i}"]) for i in nodes]}],
            },
            {"job_name": "haproxy", "static_configs": [{"targets": [_local(ports["haproxy_stats"])]}]},
            {"job_name": "etcd", "static_configs": [{"targets": [_local(ports["etcd_metrics"])]}]},
        ]
    return jobs


def _probe_relabel(blackbox: str) -> list[dict]:
    """The blackbox pattern: the target becomes the probe's ``target`` parameter and ``instance``."""
    return [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
        {"target_label": "__address__", "replacement": blackbox},
    ]


def scrape_configs_yaml(stack: StackConfig, **auth) -> str:
    """``scrape_jobs`` as YAML list items indented under ``scrape_configs:``."""
    text = yaml.safe_dump(scrape_jobs(stack, **auth), sort_keys=False, default_flow_style=False)
    return "".join(f"  {line}\n" for line in text.splitlines())
