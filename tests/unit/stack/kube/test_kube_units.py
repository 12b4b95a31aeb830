"""The Kubernetes pieces of the stack that need no API server: versions, PKI, kubeconfigs, CRD files."""

from __future__ import annotations

import base64
import re

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cqox_platform.stack.certs import ensure_tls
from cqox_platform.stack.kube.build import CRDS_DIR, VERSIONS_FILE, kube_build, read_versions
from cqox_platform.stack.kube.crds import load_crds
from cqox_platform.stack.kube.pki import ensure_kube_pki, write_kubeconfig


def test_versions_are_pinned_releases_and_locate_the_cache(monkeypatch, tmp_path):
    versions = read_versions(VERSIONS_FILE)
    assert re.fullmatch(r"v1\.\d+\.\d+", versions["K8S_VERSION"])
    assert re.fullmatch(r"v\d+\.\d+\.\d+", versions["KINE_VERSION"])
    monkeypatch.setenv("CQOX_CACHE_DIR", str(tmp_path))
    build = kube_build()
    assert build.kube_bin_dir == tmp_path / "kube" / versions["K8S_VERSION"] / "bin"
    assert build.kine_bin_dir == tmp_path / "kine" / versions["KINE_VERSION"] / "bin"


def _subject(path) -> tuple[str, list[str], x509.Certificate]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return str(cn), [str(o) for o in orgs], cert


def test_pki_identities_carry_the_user_and_groups_rbac_reads(tmp_path):
    ensure_tls(tmp_path)
    pki = ensure_kube_pki(tmp_path)
    assert _subject(pki.admin.cert)[:2] == ("cqox-admin", ["system:masters"])
    assert _subject(pki.restricted.cert)[:2] == ("cqox-restricted", [])
    assert _subject(pki.controller_manager.cert)[:2] == ("system:kube-controller-manager", [])
    _, _, serving = _subject(pki.serving.cert)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.96.0.1"}
    usages = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    for key in (pki.admin.key, pki.restricted.key, pki.serving.key, pki.service_account_key):
        assert key.stat().st_mode & 0o777 == 0o600
    etcd_ca = x509.load_pem_x509_certificate(pki.etcd_ca_cert.read_bytes())
    stack_ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert etcd_ca.subject != stack_ca.subject
    for identity in (pki.etcd_server, pki.etcd_client):
        assert _subject(identity.cert)[2].issuer == etcd_ca.subject  # not the CA of the users' certificates
    before = pki.admin.cert.read_bytes()
    assert ensure_kube_pki(tmp_path).admin.cert.read_bytes() == before  # reused, not reissued


def test_kubeconfig_is_private_and_self_contained(tmp_path):
    ensure_tls(tmp_path)
    pki = ensure_kube_pki(tmp_path)
    path = tmp_path / "secrets" / "kubeconfig"
    write_kubeconfig(path, server="https://127.0.0.1:1", ca_cert=pki.ca_cert, identity=pki.admin, user="cqox-admin")
    assert path.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(path.read_text())
    assert config["current-context"] == "cqox-admin@cqox-local"
    user = config["users"][0]["user"]
    assert base64.b64decode(user["client-key-data"]) == pki.admin.key.read_bytes()
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"


def test_crd_files_serve_the_versions_the_platform_uses_with_bounded_weights():
    crds = {crd["metadata"]["name"]: crd for crd in load_crds(CRDS_DIR)}
    assert set(crds) == {
        "virtualservices.networking.istio.io",
        "destinationrules.networking.istio.io",
        "peerauthentications.security.istio.io",
        "clusters.postgresql.cnpg.io",
        "scheduledbackups.postgresql.cnpg.io",
        "objectstores.barmancloud.cnpg.io",
        "prometheusrules.monitoring.coreos.com",
        "alertmanagerconfigs.monitoring.coreos.com",
    }
    for name, crd in crds.items():
        if not name.endswith(".istio.io"):
            continue
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        assert {"v1", "v1beta1"} <= {name for name, v in versions.items() if v["served"]}
        assert [name for name, v in versions.items() if v["storage"]] == ["v1"]
    vs = crds["virtualservices.networking.istio.io"]
    for version in vs["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        route = spec["properties"]["http"]["items"]["properties"]["route"]["items"]
        weight = route["properties"]["weight"]
        assert (weight["type"], weight["minimum"], weight["maximum"]) == ("integer", 0, 100)


def test_cloudnative_pg_cluster_crd_requires_at_least_one_instance():
    crds = {crd["metadata"]["name"]: crd for crd in load_crds(CRDS_DIR)}
    (version,) = crds["clusters.postgresql.cnpg.io"]["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["instances"]
    assert (spec["properties"]["instances"]["type"], spec["properties"]["instances"]["minimum"]) == ("integer", 1)
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.instances"
