"""The optional node's pieces that need no running service: identities, kubelet and containerd configuration."""

from __future__ import annotations

import json
import tomllib

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from cqox_platform.stack.certs import ensure_tls
from cqox_platform.stack.config import DEFAULT_PORTS, StackConfig
from cqox_platform.stack.kube.build import kube_build
from cqox_platform.stack.kube.node import CNI_CONF, ContainerdService, KubeletService
from cqox_platform.stack.kube.pki import NODE_NAME, ensure_kube_pki
from cqox_platform.stack.kube.services import KubeApiserverService


def _node(tmp_path, kubelet_port: int) -> KubeletService:
    config = StackConfig(root=tmp_path, ports={**DEFAULT_PORTS, "kubelet": kubelet_port}, with_kube_node=True)
    ensure_tls(config.tls_dir)
    return KubeletService(config, KubeApiserverService(config), ContainerdService(config))


def test_the_node_authenticates_as_itself_in_the_nodes_group(tmp_path):
    ensure_tls(tmp_path)
    pki = ensure_kube_pki(tmp_path)
    cert = x509.load_pem_x509_certificate(pki.node.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{NODE_NAME}"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:nodes"]
    scheduler = x509.load_pem_x509_certificate(pki.scheduler.cert.read_bytes())
    assert scheduler.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-scheduler"


def test_kubelet_config_fits_the_sandbox_and_keeps_its_api_private(tmp_path):
    kubelet = _node(tmp_path, 50250)
    kubelet.home.mkdir(parents=True)
    config = yaml.safe_load(kubelet.write_config().read_text())
    assert config["failCgroupV1"] is False  # the host's hierarchy is cgroup v1
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["address"] == config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["x509"]["clientCAFile"].endswith("ca.crt")
    assert config["containerRuntimeEndpoint"] == f"unix://{kubelet.containerd.socket}"
    kubeconfig = yaml.safe_load(kubelet.kubeconfig.read_text())
    assert kubeconfig["users"][0]["name"] == f"system:node:{NODE_NAME}"
    assert kubelet.kubeconfig.stat().st_mode & 0o777 == 0o600


def test_two_nodes_never_share_a_cgroup_root(tmp_path):
    """kubelet removes pod cgroups under its root that are not its own, so a shared root kills the other's pods."""
    first, second = _node(tmp_path / "a", 50250), _node(tmp_path / "b", 50350)
    assert first.cgroup_root != second.cgroup_root
    assert first.cgroup_root != "/"
    for kubelet in (first, second):
        kubelet.home.mkdir(parents=True)
        assert yaml.safe_load(kubelet.write_config().read_text())["cgroupRoot"] == kubelet.cgroup_root


def test_containerd_uses_runc_with_cgroupfs_and_a_loopback_only_network(tmp_path):
    containerd = ContainerdService(StackConfig(root=tmp_path, ports=dict(DEFAULT_PORTS), with_kube_node=True))
    containerd.home.mkdir(parents=True)
    containerd.write_config()
    config = tomllib.loads(containerd.config_path.read_text())
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert config["grpc"]["address"] == str(containerd.socket)
    assert config["root"].startswith(str(tmp_path))  # images and state stay in the stack directory
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    (conf,) = (containerd.home / "cni").iterdir()
    assert json.loads(conf.read_text()) == CNI_CONF
    assert [plugin["type"] for plugin in CNI_CONF["plugins"]] == ["loopback"]


def test_node_build_locates_its_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CQOX_CACHE_DIR", str(tmp_path))
    build = kube_build()
    assert build.node_bin_dir == tmp_path / "kube-node" / build.kubernetes_version / "bin"
    assert build.pause_archive.parent == build.node_dir
