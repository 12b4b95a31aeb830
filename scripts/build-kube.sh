#!/usr/bin/env bash
# Build the local stack's Kubernetes control plane once into a cache directory:
#   kube-apiserver and kube-controller-manager from the pinned k8s.io/kubernetes release, and kine (etcd API on
#   SQLite) as their storage. No Debian, PyPI or npm package ships kube-apiserver, but the Go module proxy serves
#   k8s.io/kubernetes; its go.mod points the staging modules (k8s.io/api, k8s.io/apimachinery, ...) at
#   ./staging/src, which a dependency cannot use, so the wrapper module in deploy/kube-build replaces each of them
#   with its published v0.MINOR.PATCH. That replace list is generated from the release's own go.mod here.
#
# Output: ${CQOX_CACHE_DIR:-/var/cache/cqox-platform}/kube/<k8s version>/bin/{kube-apiserver,kube-controller-manager}
#         ${CQOX_CACHE_DIR:-/var/cache/cqox-platform}/kine/<kine version>/bin/kine
# A second run with the binaries present is a quick no-op. `--force` rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

# shellcheck source=../deploy/kube-build/versions.env
source deploy/kube-build/versions.env
CACHE="${CQOX_CACHE_DIR:-/var/cache/cqox-platform}"
KUBE_DIR="$CACHE/kube/$K8S_VERSION"
KINE_DIR="$CACHE/kine/$KINE_VERSION"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "build-kube: $*" >&2; }

have_kube() {
  [ -x "$KUBE_DIR/bin/kube-apiserver" ] && [ -x "$KUBE_DIR/bin/kube-controller-manager" ] &&
    "$KUBE_DIR/bin/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION"
}
have_kine() { [ -x "$KINE_DIR/bin/kine" ]; }

if [ "$FORCE" = 0 ] && have_kube && have_kine; then
  log "cached: kube-apiserver $K8S_VERSION and kine $KINE_VERSION in $CACHE"
  exit 0
fi

if ! command -v go >/dev/null; then
  log "go is not on PATH; kube-apiserver is built from Go modules and needs Go >= 1.26 (Debian's golang is too old)."
  exit 1
fi
mkdir -p "$CACHE" || { log "cannot create $CACHE; set CQOX_CACHE_DIR to a writable directory"; exit 1; }

# The toolchain on this machine, never one downloaded on the fly; CGO off so the binaries are static.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
NICE=(nice -n 10)  # the cores are shared with tests and other work

if [ "$FORCE" = 1 ] || ! have_kube; then
  start=$(date +%s)
  src="$KUBE_DIR/src"
  rm -rf "$src" && mkdir -p "$src"
  log "resolving k8s.io/kubernetes@$K8S_VERSION"
  # `go mod download -json` prints the error in its JSON and exits non-zero: show the JSON's Error then.
  kube_gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("GoMod") or sys.exit(d.get("Error", "no GoMod")))')

  sed "s/@K8S_VERSION@/$K8S_VERSION/" deploy/kube-build/go.mod.tmpl > "$src/go.mod"
  # From the release's go.mod: its go line, its godebug defaults, and every staging module it replaces with
  # ./staging/src/k8s.io/NAME, mapped to NAME's published version v0.MINOR.PATCH of this release.
  edit_lines=$(go mod edit -json "$kube_gomod" | K8S_VERSION="$K8S_VERSION" python3 -c '
import json, os, sys
mod = json.load(sys.stdin)
staging_version = "v0." + os.environ["K8S_VERSION"].removeprefix("v").split(".", 1)[1]
print("-go=" + mod["Go"])
for godebug in mod.get("GoDebug") or mod.get("Godebug") or []:
    print("-godebug=" + godebug["Key"] + "=" + godebug["Value"])
count = 0
for rep in mod.get("Replace") or []:
    old, new = rep["Old"]["Path"], rep["New"]["Path"]
    if old.startswith("k8s.io/") and new == "./staging/src/" + old:
        print(f"-replace={old}={old}@{staging_version}")
        count += 1
if count == 0:
    sys.exit("no ./staging/src replace found in the release go.mod")
')
  mapfile -t edits <<< "$edit_lines"
  (cd "$src" && go mod edit "${edits[@]}")
  log "wrapper module: $(grep -c '=> k8s.io/' "$src/go.mod") staging modules replaced with published versions"

  log "downloading modules (go mod tidy)"
  (cd "$src" && go mod tidy)

  # Version stamps as hack/lib/version.sh sets them, so /version and --version report the release.
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  log "compiling kube-apiserver and kube-controller-manager $K8S_VERSION (nice; takes a while cold)"
  rm -rf "$KUBE_DIR/bin.tmp" && mkdir -p "$KUBE_DIR/bin.tmp"
  (cd "$src" && "${NICE[@]}" go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$KUBE_DIR/bin.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
  rm -rf "$KUBE_DIR/bin" && mv "$KUBE_DIR/bin.tmp" "$KUBE_DIR/bin"
  log "built $K8S_VERSION in $(($(date +%s) - start)) s"
fi

if [ "$FORCE" = 1 ] || ! have_kine; then
  start=$(date +%s)
  log "building kine $KINE_VERSION (pure-Go SQLite, CGO off)"
  rm -rf "$KINE_DIR/bin" && mkdir -p "$KINE_DIR"
  (cd "$REPO" && GOFLAGS= GOBIN="$KINE_DIR/bin" "${NICE[@]}" go install -trimpath \
    -ldflags "-s -w -X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION" "github.com/k3s-io/kine@$KINE_VERSION")
  log "built kine in $(($(date +%s) - start)) s"
fi
have_kube && have_kine
log "ready: $KUBE_DIR/bin, $KINE_DIR/bin"
