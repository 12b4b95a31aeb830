"""Where ``scripts/build-kube.sh`` puts the Kubernetes binaries, and which versions it pins.

No package repository ships kube-apiserver, so the build script compiles it from Go modules into a cache
directory keyed by version. This module reads the same ``deploy/kube-build/versions.env`` as the script, so the
stack always starts the binaries of the pinned release and never a stale build of another.

``deploy/kube-build`` stays a path in the checkout, not package data: it is the input of a build that only a
checkout can run (``scripts/build-kube.sh`` sources ``versions.env`` and compiles from a clone), so an installed
package has nothing to build with. The CRDs the stack installs are package data (``stack/crds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cqox_platform.package_data import package_path
from cqox_platform.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parents[3]
VERSIONS_FILE = REPO_ROOT / "deploy" / "kube-build" / "versions.env"
CRDS_DIR = package_path("cqox_platform.stack", "crds")
DEFAULT_CACHE_DIR = Path("/var/cache/cqox-platform")


@dataclass(frozen=True)
class KubeBuild:
    """The pinned versions and the directories holding their binaries."""

    kubernetes_version: str
    kine_version: str
    cache_dir: Path

    @property
    def kube_bin_dir(self) -> Path:
        return self.cache_dir / "kube" / self.kubernetes_version / "bin"

    @property
    def kine_bin_dir(self) -> Path:
        return self.cache_dir / "kine" / self.kine_version / "bin"

    @property
    def node_dir(self) -> Path:
        """What ``scripts/build-node.sh`` builds for the optional node: kubelet, kube-scheduler, the pause image."""
        return self.cache_dir / "kube-node" / self.kubernetes_version

    @property
    def node_bin_dir(self) -> Path:
        return self.node_dir / "bin"

    @property
    def pause_archive(self) -> Path:
        """The pod sandbox image (OCI archive) the build script compiles from the release's ``pause.c``."""
        return self.node_dir / "pause.oci.tar"

    @property
    def platform_image_archive(self) -> Path:
        """The code-location image ``scripts/build-image.sh`` writes (absent until it has run)."""
        return self.cache_dir / "image" / "cqox-platform.oci.tar"


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse the ``KEY=value`` lines of the versions file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip('"')
    return values


def kube_build() -> KubeBuild:
    """The build this checkout pins; the ``cache_dir`` setting (``CQOX_CACHE_DIR``) moves the cache as it does for
    the build script."""
    versions = read_versions()
    return KubeBuild(
        kubernetes_version=versions["K8S_VERSION"],
        kine_version=versions["KINE_VERSION"],
        cache_dir=get_settings().cache_dir or DEFAULT_CACHE_DIR,
    )
