#!/usr/bin/env bash
# Build what the local stack's optional Kubernetes node (`stack up --kube-node`) runs, once, into the cache:
#   kubelet and kube-scheduler of the same k8s.io/kubernetes release as the API server (scripts/build-kube.sh's
#   wrapper module, with two more commands), and the pod sandbox ("pause") image as an OCI archive, built from
#   the release's own build/pause/linux/pause.c (no registry is reachable to pull registry.k8s.io/pause).
#   containerd, runc and the CNI plugins are Debian packages (installed here when missing): containerd 1.6 has no
#   CRI RuntimeConfig call, which kubelet v1.36 tolerates (it falls back to its own cgroupDriver).
#
# Output: ${CQOX_CACHE_DIR:-/var/cache/cqox-platform}/kube-node/<k8s version>/bin/{kubelet,kube-scheduler}
#         ${CQOX_CACHE_DIR:-/var/cache/cqox-platform}/kube-node/<k8s version>/pause.oci.tar
# A second run with everything present is a quick no-op. `--force` rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=../deploy/kube-build/versions.env
source deploy/kube-build/versions.env
CACHE="${CQOX_CACHE_DIR:-/var/cache/cqox-platform}"
NODE_DIR="$CACHE/kube-node/$K8S_VERSION"
PAUSE_REF="registry.k8s.io/pause:3.10"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "build-node: $*" >&2; }

have_debs() { command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/loopback ]; }
have_bins() {
  [ -x "$NODE_DIR/bin/kubelet" ] && [ -x "$NODE_DIR/bin/kube-scheduler" ] &&
    "$NODE_DIR/bin/kubelet" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION"
}
have_pause() { [ -s "$NODE_DIR/pause.oci.tar" ]; }

if ! have_debs; then
  log "installing Debian's containerd, runc and containernetworking-plugins"
  apt-get install -y -q containerd runc containernetworking-plugins >/dev/null
fi
if [ "$FORCE" = 0 ] && have_bins && have_pause; then
  log "cached: kubelet, kube-scheduler $K8S_VERSION and the pause image in $NODE_DIR"
  exit 0
fi

# The API server's wrapper module (go.mod with the staging replaces) is made by build-kube.sh; reuse it.
./scripts/build-kube.sh
KUBE_SRC="$CACHE/kube/$K8S_VERSION/src"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
NICE=(nice -n 10)

if [ "$FORCE" = 1 ] || ! have_bins; then
  start=$(date +%s)
  src="$NODE_DIR/src"
  rm -rf "$src" && mkdir -p "$src"
  cp "$KUBE_SRC/go.mod" "$KUBE_SRC/go.sum" "$src/"
  (cd "$src" && go mod edit -tool=k8s.io/kubernetes/cmd/kubelet -tool=k8s.io/kubernetes/cmd/kube-scheduler &&
    go mod tidy)
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  log "compiling kubelet and kube-scheduler $K8S_VERSION (nice)"
  rm -rf "$NODE_DIR/bin.tmp" && mkdir -p "$NODE_DIR/bin.tmp"
  (cd "$src" && "${NICE[@]}" go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$NODE_DIR/bin.tmp/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler)
  rm -rf "$NODE_DIR/bin" && mv "$NODE_DIR/bin.tmp" "$NODE_DIR/bin"
  log "built kubelet and kube-scheduler in $(($(date +%s) - start)) s"
fi

if [ "$FORCE" = 1 ] || ! have_pause; then
  pause_c="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
  [ -f "$pause_c" ] || (cd "$NODE_DIR/src" 2>/dev/null || cd "$KUBE_SRC"; go mod download "k8s.io/kubernetes@$K8S_VERSION")
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  gcc -Os -static -DVERSION=3.10 -o "$work/pause" "$pause_c"
  strip "$work/pause"
  # One layer holding /pause, fixed timestamps: the same pause.c and compiler give the same digests.
  python3 - "$work/pause" "$NODE_DIR/pause.oci.tar.tmp" "$PAUSE_REF" <<'EOF'
import gzip, hashlib, io, json, sys, tarfile

binary, out, ref = sys.argv[1:4]


def tar_of(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


with open(binary, "rb") as f:
    layer_tar = tar_of([("pause", f.read(), 0o755)])
layer = gzip.compress(layer_tar, mtime=0)
config = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
    },
    sort_keys=True,
).encode()
manifest = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer), "size": len(layer)}],
    },
    sort_keys=True,
).encode()
index = json.dumps(
    {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
).encode()
blobs = [(f"blobs/sha256/{digest(blob)[7:]}", blob, 0o644) for blob in (layer, config, manifest)]
with open(out, "wb") as f:
    f.write(tar_of([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644), ("index.json", index, 0o644), *blobs]))
EOF
  mv "$NODE_DIR/pause.oci.tar.tmp" "$NODE_DIR/pause.oci.tar"
  log "pause image $PAUSE_REF: $NODE_DIR/pause.oci.tar"
fi
have_bins && have_pause
log "ready: $NODE_DIR"
