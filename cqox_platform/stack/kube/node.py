"""The local stack's optional Kubernetes node (``stack up --kube-node``): containerd, kubelet, kube-scheduler.

Without it the stack's pods stay Pending. With it, a Job of dagster-k8s's ``K8sRunLauncher`` runs in a real
container of the platform image. The pieces and what this machine's sandbox needs of them:

- containerd (Debian's 1.6) with runc and cgroupfs, its CRI plugin's CNI directory holding one loopback-only
  network. Pods run with ``hostNetwork: true``: the stack's services listen on 127.0.0.1, and a pod network
  would need addresses outside the loopback range. A pod without host networking fails its sandbox ("failed to
  find network info"), which is what a cluster without a CNI network plugin does too.
- The pod sandbox image is compiled from the release's ``pause.c`` (no registry is reachable); the platform
  image (``scripts/build-image.sh``) is imported when its archive exists, under the name the production
  instance config gives it (``cqox/platform:<version>``).
- kubelet v1.36 with ``failCgroupV1: false`` (the host has a hybrid cgroup v1 hierarchy), no swap check and no
  node-allocatable enforcement, authenticating as ``system:node:cqox-node``; its API and health port listen on
  127.0.0.1 only and require a client certificate of the stack CA. The node's InternalIP is the host's address
  (kubelet refuses a loopback one); nothing connects to it, so ``kubectl logs`` cannot reach the kubelet:
  containers' logs are files under ``pod-logs`` (``CQOX_KUBE_POD_LOGS``).
- kube-scheduler binds the Job's pod to the node, as in a cluster.

The binaries come from ``scripts/build-node.sh`` (kubelet and kube-scheduler from Go modules, cached).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import requests
import yaml

from cqox_platform.errors import MissingBinaryError
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.kube.build import kube_build
from cqox_platform.stack.kube.pki import (
    NODE_NAME,
    NODE_USER,
    SCHEDULER_USER,
    ensure_kube_pki,
    kube_pki,
    write_kubeconfig,
)
from cqox_platform.stack.kube.services import KubeApiserverService
from cqox_platform.stack.process import find_binary, run_checked, spawn, wait_until
from cqox_platform.stack.service import Service

#: containerd's namespace for CRI (kubelet's) images and containers.
CRI_NAMESPACE = "k8s.io"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
#: What ``deploy/dagster/dagster.yaml`` names the run image (``job_image``), fully qualified as CRI resolves it.
PLATFORM_IMAGE_REPOSITORY = "docker.io/cqox/platform"
CNI_CONF = {"cniVersion": "1.0.0", "name": "cqox-loopback", "plugins": [{"type": "loopback"}]}
CGROUP_MOUNT = Path("/sys/fs/cgroup")


def unmount_under(directory: Path) -> None:
    """Unmount every mount below ``directory`` (deepest first): pods' volumes and containers' root filesystems,
    so the stack directory can be removed after the node stopped."""
    prefix = str(directory.resolve()) + "/"
    points = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


class ContainerdService(Service):
    """containerd with its CRI plugin on a unix socket in its home directory; state and images stay there."""

    name = "containerd"
    binaries = ("containerd", "containerd-shim-runc-v2", "runc", "ctr")
    start_timeout = 60.0

    @property
    def port(self) -> int | None:
        return None

    @property
    def socket(self) -> Path:
        return self.home / "containerd.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    def ctr(self, *args: str, what: str, timeout: float = 120) -> str:
        ctr = find_binary("ctr")
        return run_checked([ctr, "--address", str(self.socket), "-n", CRI_NAMESPACE, *args], what=what, timeout=timeout)

    def healthy(self) -> bool:
        if not self.socket.exists():
            return False
        ctr = find_binary("ctr")
        return subprocess.run([ctr, "--address", str(self.socket), "version"], capture_output=True).returncode == 0

    def write_config(self) -> None:
        cni_conf_dir = self.home / "cni"
        cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (cni_conf_dir / "10-cqox-loopback.conflist").write_text(json.dumps(CNI_CONF) + "\n")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        self.config_path.write_text(
            f"""# Written by the local stack on every start.
version = 2
root = "{self.home / "root"}"
state = "{self.home / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
"""
        )

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.write_config()
        pid = spawn(
            [find_binary("containerd", self.binary_dirs), "--config", str(self.config_path)],
            log_path=self.log_path,
            cwd=self.home,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy, timeout=self.start_timeout, what="containerd", log_path=self.log_path, alive=self.running
        )

    def kill_containers(self) -> None:
        """SIGKILL every container this containerd runs (kubelet is gone by then, so nothing restarts them)."""
        if not self.running():
            return
        with contextlib.suppress(Exception):
            for task in self.ctr("tasks", "ls", "-q", what="listing containers", timeout=30).split():
                with contextlib.suppress(Exception):
                    self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, what="killing", timeout=30)

    def image_names(self) -> set[str]:
        return set(self.ctr("images", "ls", "-q", what="listing containerd images").split())

    def after_start(self) -> None:
        """The pause image, and the platform image if ``scripts/build-image.sh`` has written it (imported once:
        unpacking its ~450 MiB takes a minute or two)."""
        build = kube_build()
        names = self.image_names()
        if PAUSE_IMAGE not in names:
            if not build.pause_archive.exists():
                raise MissingBinaryError(
                    f"the pod sandbox image {build.pause_archive} is missing; run ./scripts/build-node.sh"
                )
            self.ctr("images", "import", str(build.pause_archive), what="importing the pause image")
        platform = self.platform_image()
        if platform and platform not in names:
            archive = build.platform_image_archive
            self.ctr("images", "import", str(archive), what=f"importing {archive}", timeout=900)
            source = json.loads(archive.with_suffix(".json").read_text())["tag"]
            self.ctr("images", "tag", "--force", source, platform, what=f"tagging {source} as {platform}")

    @staticmethod
    def platform_image() -> str | None:
        """The platform image's name on the node (``docker.io/cqox/platform:<version>``), if it has been built."""
        summary = kube_build().platform_image_archive.with_suffix(".json")
        if not summary.exists():
            return None
        return f"{PLATFORM_IMAGE_REPOSITORY}:{json.loads(summary.read_text())['version']}"

    def stop(self) -> None:
        """Kill the containers first (their shims outlive containerd otherwise), then containerd, then unmount."""
        self.kill_containers()
        super().stop()
        self._stop_shims()
        unmount_under(self.home)

    def _stop_shims(self) -> None:
        """The runc shims serving this containerd (their command line names its socket), by PID."""
        marker = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and marker in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)


class KubeletService(Service):
    """kubelet registering node ``cqox-node`` with the stack's API server and running its pods in containerd."""

    name = "kubelet"
    binaries = ("kubelet",)
    start_timeout = 120.0

    def __init__(self, stack, apiserver: KubeApiserverService, containerd: ContainerdService) -> None:
        super().__init__(stack)
        self.apiserver = apiserver
        self.containerd = containerd

    @property
    def binary_dirs(self) -> tuple[Path, ...]:
        return (kube_build().node_bin_dir,)

    @property
    def healthz_port(self) -> int:
        return self.stack.ports["kubelet_healthz"]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.stack.secrets_dir / "kubeconfig-kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        return self.home / "pod-logs"

    @property
    def cgroup_root(self) -> str:
        """This node's own cgroup for its pods, named by its port. kubelet removes every pod cgroup under its
        root that is not one of its pods, so two nodes on one machine sharing the default root kill each other's
        containers."""
        return f"/cqox-node-{self.port}"

    def cgroup_dirs(self) -> list[Path]:
        """The cgroup root in every mounted hierarchy (cgroup v1 controllers, name=systemd and the unified one)."""
        name = self.cgroup_root.lstrip("/")
        return [d / name for d in sorted(CGROUP_MOUNT.iterdir()) if (d / "cgroup.procs").exists()]

    def make_cgroup_root(self) -> None:
        """kubelet requires its cgroup root to exist; a new cpuset cgroup has no CPUs until given its parent's."""
        for directory in self.cgroup_dirs():
            directory.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (directory / name).exists() and not (directory / name).read_text().strip():
                    (directory / name).write_text((directory.parent / name).read_text())

    def remove_cgroup_root(self, timeout: float = 20) -> None:
        """Remove the node's cgroups, deepest first, once the killed containers have left them."""
        deadline = time.monotonic() + timeout
        for top in self.cgroup_dirs():
            while top.exists():
                leftovers = sorted((d for d in [top, *top.rglob("*")] if d.is_dir()), key=lambda d: -len(d.parts))
                for directory in leftovers:
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                if not top.exists() or time.monotonic() > deadline:
                    break
                time.sleep(0.5)

    def healthy(self) -> bool:
        response = requests.get(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=3)
        return response.status_code == 200 and response.text == "ok"

    def node_ready(self) -> bool:
        """The Node object's Ready condition as the API server has it."""
        response = self.apiserver.get(f"/api/v1/nodes/{NODE_NAME}")
        if response.status_code != 200:
            return False
        conditions = response.json().get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def write_config(self) -> Path:
        pki = ensure_kube_pki(self.stack.tls_dir)
        write_kubeconfig(
            self.kubeconfig, server=self.apiserver.url, ca_cert=pki.ca_cert, identity=pki.node, user=NODE_USER
        )
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self.port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki.ca_cert)},
            },
            # Only clients holding a certificate of the stack CA get past authentication, on 127.0.0.1.
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(pki.kubelet_serving.cert),
            "tlsPrivateKeyFile": str(pki.kubelet_serving.key),
            "tlsMinVersion": "VersionTLS13",
            "containerRuntimeEndpoint": self.containerd.url,
            # containerd 1.6 cannot tell kubelet its cgroup driver (no RuntimeConfig call): both use cgroupfs.
            "cgroupDriver": "cgroupfs",
            # The sandbox's hierarchy is cgroup v1 (hybrid); kubelet v1.35+ refuses it unless told otherwise.
            "failCgroupV1": False,
            "failSwapOn": False,
            "enforceNodeAllocatable": [],
            "cgroupRoot": self.cgroup_root,
            # A shared development disk: evict only when it is really full, never garbage-collect the images.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(self.pod_logs_dir),
            "registerNode": True,
        }
        path = self.home / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.pod_logs_dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        self.make_cgroup_root()
        argv = [
            find_binary("kubelet", self.binary_dirs),
            f"--config={config}",
            f"--kubeconfig={self.kubeconfig}",
            f"--root-dir={self.home / 'root'}",
            f"--hostname-override={NODE_NAME}",
        ]
        pid = spawn(argv, log_path=self.log_path, cwd=self.home)
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="kubelet /healthz",
            log_path=self.log_path,
            alive=self.running,
        )
        wait_until(
            self.node_ready,
            timeout=self.start_timeout,
            what=f"node {NODE_NAME} Ready",
            log_path=self.log_path,
            alive=self.running,
            interval=1,
        )

    def stop(self) -> None:
        super().stop()
        self.containerd.kill_containers()
        unmount_under(self.home)
        self.remove_cgroup_root()

    def env(self) -> dict[str, str]:
        return {"CQOX_KUBE_NODE": NODE_NAME, "CQOX_KUBE_POD_LOGS": str(self.pod_logs_dir)}


class KubeSchedulerService(Service):
    """kube-scheduler, so a Job's pod is bound to the node as in a cluster."""

    name = "kube-scheduler"
    binaries = ("kube-scheduler",)
    start_timeout = 90.0

    def __init__(self, stack, apiserver: KubeApiserverService) -> None:
        super().__init__(stack)
        self.apiserver = apiserver

    @property
    def binary_dirs(self) -> tuple[Path, ...]:
        return (kube_build().node_bin_dir,)

    @property
    def port(self) -> int | None:
        return self.stack.ports.get("kube_scheduler")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.stack.secrets_dir / "kubeconfig-scheduler"

    def healthy(self) -> bool:
        pki = kube_pki(self.stack.tls_dir)
        response = requests.get(
            f"{self.url}/healthz", cert=(str(pki.admin.cert), str(pki.admin.key)), verify=str(pki.ca_cert), timeout=3
        )
        return response.status_code == 200

    def start(self) -> None:
        pki = ensure_kube_pki(self.stack.tls_dir)
        write_kubeconfig(
            self.kubeconfig, server=self.apiserver.url, ca_cert=pki.ca_cert, identity=pki.scheduler, user=SCHEDULER_USER
        )
        serving = tls_files(self.stack.tls_dir)
        argv = [
            find_binary("kube-scheduler", self.binary_dirs),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving.server_cert}",
            f"--tls-private-key-file={serving.server_key}",
            "--tls-min-version=VersionTLS13",
            f"--client-ca-file={pki.ca_cert}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        self.home.mkdir(parents=True, exist_ok=True)
        pid = spawn(argv, log_path=self.log_path, cwd=self.home)
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="kube-scheduler /healthz",
            log_path=self.log_path,
            alive=self.running,
            interval=0.5,
        )


def node_services(stack, apiserver: KubeApiserverService) -> list[Service]:
    """containerd, kubelet and kube-scheduler, in start order."""
    containerd = ContainerdService(stack)
    return [containerd, KubeletService(stack, apiserver, containerd), KubeSchedulerService(stack, apiserver)]
