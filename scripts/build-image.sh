#!/usr/bin/env bash
# Build the code location's OCI image from Debian packages, without a container engine: mmdebstrap makes the
# Debian layer, pip in a chroot of it makes the virtualenv's layers, umoci assembles the OCI image.
#
#   ./scripts/build-image.sh            build (reusing cached downloads and the cached Debian and dependency layers)
#   ./scripts/build-image.sh --refresh  rebuild the Debian and dependency layers too (Debian security updates)
#   ./scripts/build-image.sh --lock     re-resolve deploy/image/requirements.lock (run after changing dependencies)
#
# Output: ${CQOX_IMAGE_CACHE:-/var/cache/cqox-platform/image}/cqox-platform.oci.tar, an OCI archive of image
# cqox-platform:<package version> (`podman load -i ...`, `skopeo copy oci-archive:...`), and cqox-platform.oci.json
# next to it (layer digests, sizes, Debian package versions, build seconds).
#
# Layers:
#   1. Debian 12: python3, PostgreSQL 15 server and client, promtool, amtool, setpriv (util-linux), CA
#      certificates, and the non-root user `cqox` (uid/gid 10001). Cached by a key over its inputs, so a rebuild
#      reuses it until those inputs change or --refresh is given.
#   2. /opt/cqox/venv with the distributions pinned in deploy/image/requirements.lock (with hashes), installed
#      offline by the image's own python3. Cached with layer 1 (compressed) until the lock file changes.
#   3. The platform's wheel installed into that virtualenv: only the files its RECORD lists, a few MiB, so a
#      rebuild for new code redoes this layer alone.
#
# Reproducibility: every layer is written with SOURCE_DATE_EPOCH, sorted, with numeric owners and fixed
# mtimes, so the same lock file, the same commit and the same Debian package versions give the same layer
# digests. Debian's archive moves (point releases, security updates), so the Debian layer of a --refresh
# rebuild on another day can differ: cqox-platform.oci.json lists every package version it holds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

CACHE="${CQOX_IMAGE_CACHE:-/var/cache/cqox-platform/image}"
LOCK="$ROOT/deploy/image/requirements.lock"
IMAGE_NAME=cqox-platform
SUITE=bookworm
APP_UID=10001
GRPC_PORT=3030
# The Debian layer's timestamps: fixed, so its digest depends only on the package versions it holds.
BASE_EPOCH=1735689600  # 2025-01-01T00:00:00Z
DEBIAN_PACKAGES=(
  python3 ca-certificates tzdata util-linux passwd
  postgresql-15 postgresql-client-15
  prometheus prometheus-alertmanager
)
# What a container never runs: the Prometheus and Alertmanager servers and the web UI's JavaScript (only promtool
# and amtool are needed; moment-timezone alone is 200 MiB), documentation and translations (copyright files stay).
DPKG_EXCLUDES=(
  path-exclude=/usr/bin/prometheus path-exclude=/usr/bin/prometheus-alertmanager path-exclude=/usr/share/javascript/*
  path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright
  path-exclude=/usr/share/man/* path-exclude=/usr/share/info/*
  path-exclude=/usr/share/locale/* path-include=/usr/share/locale/locale.alias
)

mode=build
for arg in "$@"; do
  case "$arg" in
    --refresh) mode=refresh ;;
    --lock) mode=lock ;;
    *) echo "build-image: unknown argument $arg (known: --refresh, --lock)" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
log() { echo "build-image: [$(( $(date +%s) - started ))s] $*" >&2; }

# --- tools ----------------------------------------------------------------------------------------------------
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v umoci >/dev/null || need+=(umoci)
command -v mmtarfilter >/dev/null || need+=(mmdebstrap)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}"
    exit 1
  fi
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$(id -u)" -ne 0 ]; then
  log "needs root: the Debian layer is made in a chroot (mmdebstrap --mode=root)"
  exit 1
fi
# The image's python3 is Debian 12's; wheels are resolved and downloaded by the same version on this host.
PY=/usr/bin/python3
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { log "$PY is not Python 3.11 (the image's); run on Debian 12"; exit 1; }

mkdir -p "$CACHE"/{base,dists,wheels,pip}
WORK=$(mktemp -d "$CACHE/work.XXXXXX")
cleanup() {
  # A failed chroot step may leave its bind mounts: they live in a private mount namespace (unshare), so
  # removing the directory never reaches the host's /dev or /proc.
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- the lock file --------------------------------------------------------------------------------------------
if [ "$mode" = lock ]; then
  log "resolving the platform's dependencies for CPython 3.11 on linux x86_64"
  "$PY" -m pip install --quiet --dry-run --ignore-installed --report "$WORK/report.json" "$ROOT"
  "$PY" - "$WORK/report.json" "$LOCK" <<'PY'
import json, sys
report, out = sys.argv[1], sys.argv[2]
lines = [
    "# Every Python distribution of the image's virtualenv, resolved for CPython 3.11 on linux x86_64 with the",
    "# sha256 of the file pip chose. Regenerate with ./scripts/build-image.sh --lock after changing pyproject.toml.",
]
for item in sorted(json.load(open(report))["install"], key=lambda i: i["metadata"]["name"].lower()):
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if name == "cqox-platform":
        continue  # built from the checkout
    digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
    lines.append(f"{name}=={version} --hash=sha256:{digest}")
open(out, "w").write("\n".join(lines) + "\n")
print(f"{len(lines) - 2} pinned distributions written to {out}", file=sys.stderr)
PY
  exit 0
fi
[ -f "$LOCK" ] || { log "$LOCK is missing: run ./scripts/build-image.sh --lock"; exit 1; }

# --- layer 1: Debian -------------------------------------------------------------------------------------------
# The apt sources of this host (Debian 12's), so the image is built from the mirror the machine is set up with.
SOURCES="${CQOX_IMAGE_APT_SOURCES:-}"
if [ -z "$SOURCES" ]; then
  for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$candidate" ] && grep -q "$SUITE" "$candidate"; then SOURCES=$candidate; break; fi
  done
fi
[ -n "$SOURCES" ] || { log "no apt sources for $SUITE found; set CQOX_IMAGE_APT_SOURCES to a sources file"; exit 1; }

# What mmdebstrap runs: the cache key of the Debian layer is taken over these options and the lists above, so
# editing anything else in this script keeps the cached layer.
MMDEBSTRAP_OPTS=(
  --mode=root --variant=essential --format=tar --quiet
  --include="$(IFS=,; echo "${DEBIAN_PACKAGES[*]}")"
  --aptopt='Acquire::Retries "3"'
  # Downloads are kept between builds; PostgreSQL's packages must not create a cluster in the image.
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives "$1"/etc/postgresql-common'
  --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/"
  --setup-hook='echo "create_main_cluster = false" > "$1"/etc/postgresql-common/createcluster.conf'
  --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs"
  # The non-root user everything runs as, its Dagster home and the drills' scratch directory.
  --customize-hook="chroot \"\$1\" groupadd --gid $APP_UID cqox"
  --customize-hook="chroot \"\$1\" useradd --uid $APP_UID --gid $APP_UID --create-home --home-dir /home/cqox --shell /usr/sbin/nologin --comment cqox-platform cqox"
  --customize-hook="install -d -o $APP_UID -g $APP_UID -m 0750 \"\$1\"/opt/dagster \"\$1\"/opt/dagster/dagster_home \"\$1\"/scratch"
  # What differs between builds of the same packages: the host's resolver and name, ssl-cert's random
  # snakeoil key (PostgreSQL's packages pull it in; nothing uses it), package caches and backups.
  --customize-hook='rm -f "$1"/etc/resolv.conf "$1"/etc/hostname "$1"/etc/ssl/private/ssl-cert-snakeoil.key "$1"/etc/ssl/certs/ssl-cert-snakeoil.pem'
  --customize-hook='find "$1"/etc/ssl/certs -xtype l -delete'
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old'
  # ucf keeps the random name of the temporary file it compared our createcluster.conf with in debconf.
  --customize-hook='sed -i "s|^ NEW = /tmp/postgresql-common\..*| NEW = /tmp/postgresql-common|" "$1"/var/cache/debconf/config.dat'
)
for opt in "${DPKG_EXCLUDES[@]}"; do MMDEBSTRAP_OPTS+=(--dpkgopt="$opt"); done
base_key=$(printf '%s\n' "$SUITE" "$BASE_EPOCH" "${MMDEBSTRAP_OPTS[@]}" | sha256sum | cut -c1-16)
BASE_TAR="$CACHE/base/debian-$base_key.tar"
if [ "$mode" = refresh ] || [ ! -f "$BASE_TAR" ]; then
  log "building the Debian layer ($SUITE: ${DEBIAN_PACKAGES[*]}); downloads cached in $CACHE/debs"
  mkdir -p "$CACHE/debs"
  SOURCE_DATE_EPOCH=$BASE_EPOCH mmdebstrap "${MMDEBSTRAP_OPTS[@]}" "$SUITE" - "$SOURCES" \
    | mmtarfilter --path-exclude='/dev/*' > "$WORK/base.tar"
  mv "$WORK/base.tar" "$BASE_TAR"
  # Only the current Debian layer is worth keeping: another key means other inputs.
  find "$CACHE/base" -maxdepth 1 -name 'debian-*' ! -name "debian-$base_key.*" -delete
else
  log "reusing the cached Debian layer $BASE_TAR (--refresh rebuilds it)"
fi

# --- the wheels -------------------------------------------------------------------------------------------------
# Everything pip installs comes from the lock file, checked against its hashes; two distributions ship only
# sources and are built into wheels here, once.
log "downloading the locked distributions (cached in $CACHE/dists)"
# Offline first: once every locked file is in the cache, a rebuild asks no index (and once they were all checked
# against the lock's hashes, a stamp skips the check).
pip_download() { PIP_CACHE_DIR="$CACHE/pip" "$PY" -m pip download --quiet --no-deps --require-hashes --dest "$CACHE/dists" -r "$LOCK" "$@"; }
lock_stamp="$CACHE/dists/.complete-$(sha256sum "$LOCK" | cut -c1-16)"
if [ ! -f "$lock_stamp" ]; then
  pip_download --no-index --find-links "$CACHE/dists" 2>/dev/null || pip_download
  touch "$lock_stamp"
fi
for sdist in "$CACHE"/dists/*.tar.gz; do
  [ -e "$sdist" ] || continue
  name=$(basename "$sdist" .tar.gz)  # project-version
  project=${name%-*} release=${name##*-}
  ls "$CACHE/wheels/${project//-/_}-$release"-*.whl >/dev/null 2>&1 && continue
  log "building a wheel from $(basename "$sdist")"
  PIP_CACHE_DIR="$CACHE/pip" "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$CACHE/wheels" "$sdist"
done
cp -n "$CACHE"/dists/*.whl "$CACHE/wheels/"
log "building the platform's wheel"
PIP_CACHE_DIR="$CACHE/pip" "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/app" "$ROOT"
APP_WHEEL=$(ls "$WORK"/app/cqox_platform-*.whl)
VERSION=$(basename "$APP_WHEEL" | cut -d- -f2)
PIP_WHEEL=$(ls "$CACHE"/wheels/pip-*.whl 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PIP_WHEEL" ]; then
  PIP_CACHE_DIR="$CACHE/pip" "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$CACHE/wheels" pip
  PIP_WHEEL=$(ls "$CACHE"/wheels/pip-*.whl | sort -V | tail -1)
fi

if git -C "$ROOT" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  APP_EPOCH=$(git -C "$ROOT" log -1 --format=%ct)
  REVISION=$(git -C "$ROOT" rev-parse HEAD)
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null || REVISION="$REVISION-dirty"
else
  APP_EPOCH=$BASE_EPOCH
  REVISION=unknown
fi

# A deterministic tar of one tree: sorted, owned by root, every mtime the epoch, no atime/ctime.
det_tar() {
  local epoch=$1 dir=$2 out=$3; shift 3
  tar --create --file "$out" --directory "$dir" --sort=name --format=posix --numeric-owner --owner=0 --group=0 \
    --mtime="@$epoch" --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "$@"
}

# The Debian layer unpacked, for the image's own python3 to install into (pip runs in a chroot of it).
ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"
tar -C "$ROOTFS" -xf "$BASE_TAR"
dpkg-query --admindir="$ROOTFS/var/lib/dpkg" -W -f='${Package}=${Version}\n' > "$WORK/packages"
mkdir -p "$ROOTFS/tmp/wheels" "$ROOTFS/tmp/app" "$ROOTFS/dev" "$ROOTFS/proc"
cp "$APP_WHEEL" "$PIP_WHEEL" "$ROOTFS/tmp/app/"
# pip in a chroot of the image, in a private mount namespace: the bind mounts end with the command, whatever
# happens. The virtualenv is made first (without pip: the image never runs pip).
image_pip() {
  SOURCE_DATE_EPOCH=$1 unshare --mount --propagation private -- sh -euc '
    rootfs=$1 wheels=$2 pip=$3 epoch=$4; shift 4
    mount --bind /dev "$rootfs/dev"
    mount -t proc proc "$rootfs/proc"
    mount --bind -o ro "$wheels" "$rootfs/tmp/wheels"
    [ -x "$rootfs/opt/cqox/venv/bin/python" ] || chroot "$rootfs" /usr/bin/python3 -m venv --without-pip /opt/cqox/venv
    chroot "$rootfs" env -i PATH=/usr/bin:/bin SOURCE_DATE_EPOCH="$epoch" PYTHONHASHSEED=0 \
      /opt/cqox/venv/bin/python "/tmp/app/$pip/pip" install --quiet --no-index --no-deps --no-cache-dir \
      --disable-pip-version-check --find-links /tmp/wheels "$@"
  ' sh "$ROOTFS" "$CACHE/wheels" "$(basename "$PIP_WHEEL")" "$1" "${@:2}"
}

# --- layer 2: the locked dependencies ---------------------------------------------------------------------------
# Cached with an OCI layout holding layers 1 and 2 (compressed once): a rebuild for new platform code only adds
# layer 3 to a copy of it.
deps_key=$( { echo "$base_key"; cat "$LOCK"; } | sha256sum | cut -c1-16)
DEPS_LAYOUT="$CACHE/deps/oci-$deps_key"
if [ "$mode" = refresh ] || [ ! -f "$DEPS_LAYOUT/index.json" ]; then
  log "installing the locked dependencies into /opt/cqox/venv with the image's python3"
  grep -v '^#' "$LOCK" | sed 's/ --hash=.*//' > "$ROOTFS/tmp/app/requirements.txt"
  image_pip "$BASE_EPOCH" -r /tmp/app/requirements.txt
  (cd "$ROOTFS" && { echo ./opt; echo ./opt/cqox; find ./opt/cqox/venv; } | LC_ALL=C sort) > "$WORK/deps.list"
  det_tar "$BASE_EPOCH" "$ROOTFS" "$WORK/deps.tar" --no-recursion --files-from "$WORK/deps.list"
  log "compressing layers 1 and 2 into $DEPS_LAYOUT"
  base_created=$(date -u -d "@$BASE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  mkdir -p "$CACHE/deps"
  rm -rf "$WORK/deps-oci"
  umoci init --layout "$WORK/deps-oci"
  umoci new --image "$WORK/deps-oci:deps"
  umoci raw add-layer --image "$WORK/deps-oci:deps" --history.created "$base_created" \
    --history.created_by "mmdebstrap $SUITE: ${DEBIAN_PACKAGES[*]}" "$BASE_TAR"
  umoci raw add-layer --image "$WORK/deps-oci:deps" --history.created "$base_created" \
    --history.created_by "pip install -r deploy/image/requirements.lock" "$WORK/deps.tar"
  umoci gc --layout "$WORK/deps-oci"
  rm -rf "$DEPS_LAYOUT"
  mv "$WORK/deps-oci" "$DEPS_LAYOUT"
  find "$CACHE/deps" -mindepth 1 -maxdepth 1 ! -name "oci-$deps_key" -exec rm -rf {} +
else
  # The platform's layer is made against a fresh virtualenv of the same python3: pip installs it without its
  # dependencies, so the 900 MiB of layer 2 need not be unpacked for it.
  log "reusing the cached dependency layer $DEPS_LAYOUT"
fi

# --- layer 3: the platform ----------------------------------------------------------------------------------------
log "installing $(basename "$APP_WHEEL") into /opt/cqox/venv"
image_pip "$APP_EPOCH" "/tmp/app/$(basename "$APP_WHEEL")"
SITE=opt/cqox/venv/lib/python3.11/site-packages
DIST_INFO=$(cd "$ROOTFS/$SITE" && ls -d cqox_platform-*.dist-info)
# What pip records about where it ran (it never reaches the image otherwise).
rm -f "$ROOTFS/$SITE/$DIST_INFO/direct_url.json"
sed -i '/direct_url.json/d' "$ROOTFS/$SITE/$DIST_INFO/RECORD"
# The layer holds exactly what the wheel installed: the files its RECORD lists, and their directories.
"$PY" - "$ROOTFS" "$SITE" "$DIST_INFO" > "$WORK/app.list" <<'PY'
import csv, os, sys
rootfs, site, dist_info = sys.argv[1:]
paths = set()
with open(os.path.join(rootfs, site, dist_info, "RECORD"), newline="") as record:
    for row in csv.reader(record):
        path = os.path.normpath(os.path.join(site, row[0]))
        while path not in ("", "opt", "opt/cqox", "opt/cqox/venv") and path not in paths:
            paths.add(path)
            path = os.path.dirname(path)
for path in sorted(paths):
    print(f"./{path}")
PY
det_tar "$APP_EPOCH" "$ROOTFS" "$WORK/app.tar" --no-recursion --files-from "$WORK/app.list"

# --- the OCI image ---------------------------------------------------------------------------------------------
log "assembling the OCI image $IMAGE_NAME:$VERSION"
created=$(date -u -d "@$APP_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
LAYOUT="$WORK/oci"
# Blobs never change once written: hard links share the cached layers' files instead of copying 450 MiB.
cp -al "$DEPS_LAYOUT" "$LAYOUT"
# ... except the files umoci rewrites.
for meta in index.json oci-layout; do rm "$LAYOUT/$meta" && cp "$DEPS_LAYOUT/$meta" "$LAYOUT/$meta"; done
umoci tag --image "$LAYOUT:deps" "$VERSION"
umoci rm --image "$LAYOUT:deps"
umoci raw add-layer --image "$LAYOUT:$VERSION" --history.created "$created" \
  --history.created_by "pip install --no-deps $(basename "$APP_WHEEL")" "$WORK/app.tar"
umoci config --image "$LAYOUT:$VERSION" --created "$created" --history.created "$created" \
  --history.created_by "build-image.sh: user, environment, command" \
  --architecture amd64 --os linux \
  --config.user "$APP_UID:$APP_UID" \
  --config.workingdir /home/cqox \
  --config.env PATH=/opt/cqox/venv/bin:/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env DAGSTER_HOME=/opt/dagster/dagster_home \
  --config.env LANG=C.UTF-8 \
  --config.env TMPDIR=/scratch \
  --config.exposedports "$GRPC_PORT/tcp" \
  --config.cmd dagster --config.cmd api --config.cmd grpc --config.cmd -m --config.cmd cqox_platform.definitions \
  --config.cmd -h --config.cmd 0.0.0.0 --config.cmd -p --config.cmd "$GRPC_PORT" \
  --config.label org.opencontainers.image.title=cqox-platform \
  --config.label org.opencontainers.image.version="$VERSION" \
  --config.label org.opencontainers.image.revision="$REVISION" \
  --manifest.annotation org.opencontainers.image.version="$VERSION"
umoci gc --layout "$LAYOUT"
# umoci's tags are bare; podman names an image after the layout's ref.name, so it carries the image's name too.
"$PY" - "$LAYOUT/index.json" "$IMAGE_NAME:$VERSION" <<'PY'
import json, sys
path, ref = sys.argv[1:]
index = json.load(open(path))
(manifest,) = index["manifests"]
manifest["annotations"]["org.opencontainers.image.ref.name"] = ref
json.dump(index, open(path, "w"), separators=(",", ":"))
PY

OUT="$CACHE/$IMAGE_NAME.oci.tar"
det_tar "$APP_EPOCH" "$LAYOUT" "$WORK/image.tar" .
mv "$WORK/image.tar" "$OUT"

# --- what was built --------------------------------------------------------------------------------------------
elapsed=$(( $(date +%s) - started ))
"$PY" - "$LAYOUT" "$OUT" "$WORK/packages" "$VERSION" "$REVISION" "$elapsed" <<'PY'
import json, os, sys
layout, out, pkgs, version, revision, elapsed = sys.argv[1:]
def blob(digest):
    return os.path.join(layout, "blobs", *digest.split(":"))
index = json.load(open(os.path.join(layout, "index.json")))
manifest_desc = index["manifests"][0]
manifest = json.load(open(blob(manifest_desc["digest"])))
layers = [{"digest": l["digest"], "bytes": l["size"]} for l in manifest["layers"]]
summary = {
    "archive": out,
    "archive_bytes": os.path.getsize(out),
    "tag": manifest_desc["annotations"]["org.opencontainers.image.ref.name"],
    "version": version,
    "revision": revision,
    "manifest": manifest_desc["digest"],
    "config": manifest["config"]["digest"],
    "layers": layers,
    "compressed_bytes": sum(l["bytes"] for l in layers),
    "build_seconds": int(elapsed),
    "debian_packages": sorted(open(pkgs).read().split()),
}
path = out[: -len(".tar")] + ".json"
json.dump(summary, open(path, "w"), indent=1)
for layer in layers:
    print(f"layer {layer['digest']} {layer['bytes'] / 2**20:.1f} MiB", file=sys.stderr)
print(f"build-image: {out} ({summary['compressed_bytes'] / 2**20:.0f} MiB compressed) in {elapsed} s; "
      f"summary in {path}", file=sys.stderr)
PY
