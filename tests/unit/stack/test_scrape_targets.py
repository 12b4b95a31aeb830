"""The Prometheus configuration the stack writes, checked by promtool for the single-node and the HA layout."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from cqox_platform.stack.certs import ensure_tls
from cqox_platform.stack.config import DEFAULT_PORTS, StackConfig
from cqox_platform.stack.prometheus import PrometheusService


def _written(tmp_path, ha: bool) -> dict:
    config = StackConfig(root=tmp_path, ports=dict(DEFAULT_PORTS), ha=ha)
    ensure_tls(config.tls_dir)
    config.secrets_dir.mkdir()
    (config.secrets_dir / "alertmanager-password").write_text("x")
    prometheus = PrometheusService(config)
    prometheus.write_config()
    checked = subprocess.run(
        ["promtool", "check", "config", str(prometheus.config_path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return yaml.safe_load(prometheus.config_path.read_text())


@pytest.mark.parametrize("ha", [False, True])
def test_every_service_is_a_job_and_the_config_passes_promtool(tmp_path, ha):
    jobs = {job["job_name"]: job for job in _written(tmp_path, ha)["scrape_configs"]}
    expected = {"prometheus", "pushgateway", "cqox-traffic", "postgres", "openbao", "alertmanager", "kube-apiserver"}
    expected |= {"blackbox", "tls-expiry", "openbao-health"}
    if ha:
        expected |= {"patroni", "haproxy", "etcd"}
    assert set(jobs) == expected
    # One PostgreSQL exporter per node, each labelled with its node.
    nodes = [group["labels"]["node"] for group in jobs["postgres"]["static_configs"]]
    assert nodes == (["node1", "node2", "node3"] if ha else ["single"])
    # Verified TLS wherever the service has a certificate; plain HTTP only for loopback metrics-only listeners.
    plain = {name for name, job in jobs.items() if job.get("scheme", "http") == "http"}
    assert plain == {"prometheus", "cqox-traffic"} | ({"haproxy", "etcd"} if ha else set())
    for name, job in jobs.items():
        if name not in plain:
            assert job["tls_config"]["ca_file"].endswith("ca.crt") and "insecure_skip_verify" not in job["tls_config"]
    # The Pushgateway answers only its basic-auth users: Prometheus scrapes it as its own one, not as the pushers.
    auth = jobs["pushgateway"]["basic_auth"]
    assert auth["username"] == "prometheus" and auth["password_file"].endswith("pushgateway-prometheus-password")
    # The API server is read as the system:monitoring identity, never as the admin.
    assert jobs["kube-apiserver"]["tls_config"]["cert_file"].endswith("kube/monitoring.crt")


def test_the_pushgateway_keeps_no_service_label_of_its_own(tmp_path):
    """Pushed SLO gauges carry their own `service`; a target label would rename it to exported_service."""
    jobs = {job["job_name"]: job for job in _written(tmp_path, False)["scrape_configs"]}
    assert all("labels" not in group for group in jobs["pushgateway"]["static_configs"])
    assert jobs["pushgateway"]["honor_labels"] is False
