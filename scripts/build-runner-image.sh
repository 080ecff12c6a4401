#!/usr/bin/env bash
# Build the Docker images that CI jobs run in, offline: no container registry is
# reachable here, so each root filesystem comes from debootstrap + the Debian
# mirror apt already uses, and is loaded with `docker import`.
# Usage: build-runner-image.sh [--force] [IMAGE...]
#   IMAGE is NAME:RELEASE, RELEASE a Debian release: bookworm (Python 3.11) or
#   trixie (Python 3.13). Default: ci-runner:bookworm ci-runner:trixie.
# Idempotent: returns at once for each IMAGE that exists (unless --force).
set -euo pipefail

FORCE=0
IMAGES=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) echo "build-runner-image: unknown option $arg" >&2; exit 2 ;;
    *) IMAGES+=("$arg") ;;
  esac
done
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(ci-runner:bookworm ci-runner:trixie)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "build-runner-image: $*" >&2; }

bash "$HERE/ensure-docker.sh"
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
missing=()
for image in "${IMAGES[@]}"; do
  case "${image##*:}" in
    bookworm | trixie) ;;
    *) echo "build-runner-image: $image: its tag must be a Debian release (bookworm, trixie)" >&2; exit 2 ;;
  esac
  [[ $FORCE == 1 ]] || ! have_image "$image" || continue
  missing+=("$image")
done
[[ ${#missing[@]} -gt 0 ]] || exit 0

# Serialize concurrent builds (e.g. .ci/run and quickstart.sh at once); whoever
# waited re-checks, since the other one may have just built it.
exec 9>/var/tmp/ci-runner-image.lock
flock 9

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
fi

# The mirror apt uses (CI_DEBIAN_MIRROR overrides): first URIs of a deb822 stanza
# whose Suites include "bookworm"; else a one-line sources.list; else deb.debian.org.
# Every release comes from it.
mirror=${CI_DEBIAN_MIRROR:-}
if [[ -z $mirror && -r /etc/apt/sources.list.d/debian.sources ]]; then
  mirror=$(awk 'BEGIN { RS = "" }
    { uri = ""; ok = 0; n = split($0, L, "\n")
      for (i = 1; i <= n; i++) {
        if (L[i] ~ /^URIs:/) { split(L[i], a, " "); uri = a[2] }
        if (L[i] ~ /^Suites:/) { m = split(L[i], s, " "); for (j = 2; j <= m; j++) if (s[j] == "bookworm") ok = 1 }
      }
      if (ok && uri != "") { print uri; exit } }' /etc/apt/sources.list.d/debian.sources)
fi
if [[ -z $mirror && -r /etc/apt/sources.list ]]; then
  mirror=$(awk '$1 == "deb" { sub(/\[[^]]*\][ \t]*/, ""); if ($3 == "bookworm") { print $2; exit } }' \
    /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

# Python, and a toolchain for projects whose build compiles extensions: gcc/g++, make,
# the C library's and Python's headers, pkg-config (about 200 MiB more; see README).
# Debian packages a project needs beyond these come from its ci.toml `system_packages`,
# installed with apt from this same mirror (debootstrap writes it in sources.list).
PACKAGES=python3,python3-pip,python3-venv,python3-dev,gcc,g++,make,libc6-dev,pkg-config

# build IMAGE: debootstrap the release named by IMAGE's tag, set it up, verify it and
# tag it IMAGE. Runs in a subshell of its own (its folder and traps are its own).
build() (
  local image=$1 release=${1##*:}
  if [[ $FORCE == 0 ]] && have_image "$image"; then
    return 0 # built by whoever held the lock before us
  fi
  local start=$SECONDS
  WORK=$(mktemp -d /var/tmp/ci-runner-build.XXXXXX)
  ROOTFS=$WORK/rootfs
  TMP_TAG="ci-runner-build:$$-$release" # verified before it gets the real name
  cleanup() {
    # debootstrap may leave /proc etc. mounted if it failed; never rm through a mount.
    grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l || true
    rm -rf --one-file-system "$WORK"
    docker rmi "$TMP_TAG" >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM # bash skips the EXIT trap when killed by an untrapped signal

  log "debootstrap $release from $mirror into $ROOTFS"
  debootstrap --variant=minbase --include="$PACKAGES" \
    "$release" "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
  }

  # Behave like the official python:*-slim image: `python`/`pip` on PATH and pip
  # allowed to install into the system environment (jobs run `pip install -r ...`).
  ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
  rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED

  # Containers reach PyPI only through a TLS-intercepting proxy whose CA is in the
  # host bundle. Copy the bundle in and point pip at it. A copy also goes into
  # /usr/local/share/ca-certificates so a later update-ca-certificates keeps it.
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
    "$ROOTFS/usr/local/share/ca-certificates/ci-host-bundle.crt"
  cat >"$ROOTFS/etc/pip.conf" <<'PIPCONF'
[global]
cert = /etc/ssl/certs/ca-certificates.crt
disable-pip-version-check = true
no-input = true
root-user-action = ignore
PIPCONF

  # Preinstall pytest so a job never downloads it (~5 s saved per job). Clean env:
  # the host's PIP_* settings (find-links, local indexes) don't exist in the chroot.
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    chroot "$ROOTFS" python3 -m pip install -q --no-cache-dir pytest
  # Non-root user for sandboxing jobs later.
  chroot "$ROOTFS" useradd --uid 1000 --create-home --home-dir /home/runner --shell /bin/bash runner

  # Keep the image small: apt caches/lists and docs are not needed to run tests.
  # resolv.conf/hostname are supplied by docker at run time.
  rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/root/.cache
  : >"$ROOTFS/etc/resolv.conf"

  # --numeric-owner: ownership must follow the image's /etc/passwd, not the host's.
  log "importing as $image"
  tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TMP_TAG" >/dev/null

  # Verify before the image gets its real name, so a broken build is never skipped
  # as "already built" next time. `pip download` proves the CA/proxy setup works.
  log "verifying"
  docker run --rm "$TMP_TAG" python --version
  docker run --rm "$TMP_TAG" python -m pytest --version
  docker run --rm "$TMP_TAG" pip --version
  docker run --rm "$TMP_TAG" pip download -q --no-deps -d /tmp six
  docker run --rm "$TMP_TAG" sh -c 'printf "#include <Python.h>\nint main(void) { return 0; }\n" \
    | gcc -x c - -o /tmp/a.out $(python3-config --includes) && /tmp/a.out && make --version >/dev/null'

  local old_id
  old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  docker tag "$TMP_TAG" "$image"
  # A --force rebuild leaves the previous build untagged; drop it (fails harmlessly
  # if something else still uses or tags it).
  if [[ -n $old_id && $old_id != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  local size
  size=$(docker image inspect -f '{{.Size}}' "$image")
  log "built $image in $((SECONDS - start)) s ($((size / 1024 / 1024)) MiB)"
)

for image in "${missing[@]}"; do
  build "$image"
done
