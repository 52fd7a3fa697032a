#!/usr/bin/env bash
# Build the tutorial's image from the Dockerfile and run commands in it, without a Docker daemon.
#   usage: container.sh build | run CMD [ARG...]
# build: installs podman, buildah and debootstrap if missing; makes the debian:12 base from
#   Debian's archive where no registry gives it; `podman build` of the Dockerfile into $IMAGE.
# run: CMD under the image's entrypoint (its own mini SLURM) in a fresh container, which is removed
#   afterwards; exits with CMD's status, or 1 if CMD succeeded but left a process on the host.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${LHCCNN_IMAGE:-lhccnn}
# chroot: what works without a daemon in a sandbox that refuses the OCI runtime's setrlimit
ISOLATION=${LHCCNN_ISOLATION:-chroot}
BASE=docker.io/library/debian:12   # the Dockerfile's FROM debian:12, fully named
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
# Under chroot isolation the container shares the host's network and process table: its mini
# SLURM takes ports of its own (its tests start a second cluster 100 above them), so a cluster
# on the host's default ports (16817, 17001+) and one in the image run side by side.
CT_ENV=(MINISLURM_CTLD_PORT=16517 MINISLURM_NODE_PORT=17301)

log() { echo "container: $*" >&2; }
die() { echo "container: error: $*" >&2; exit 1; }

tools() {   # the daemonless tools, from Debian, only if missing
  local missing=() p
  for p in podman buildah debootstrap; do command -v "$p" >/dev/null || missing+=("$p"); done
  ((${#missing[@]} == 0)) && return
  log "installing ${missing[*]}"
  local sudo=(); ((EUID == 0)) || sudo=(sudo)
  { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null; } ||
    die "could not install ${missing[*]} with apt-get; install them by hand (Debian 12 names)"
}

base() {    # debian:12: present, pulled, or made from Debian's archive (the same minimal system)
  podman image exists "$BASE" && return
  if timeout 60 podman pull -q "$BASE" >/dev/null 2>&1; then log "pulled $BASE"; return; fi
  log "no registry answered: making $BASE with debootstrap from $MIRROR (~1 min)"
  local dir; dir=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: $dir is local
  trap "rm -rf '$dir'" EXIT
  timeout 900 debootstrap --variant=minbase bookworm "$dir" "$MIRROR/debian" >"$dir.log" 2>&1 ||
    { tail -20 "$dir.log" >&2; rm -f "$dir.log"; die "debootstrap of Debian 12 from $MIRROR failed (log above)"; }
  rm -f "$dir.log"
  # the suites of Docker's official debian:12, so the image gets the same updates as a host
  printf 'deb %s/debian bookworm main\ndeb %s/debian bookworm-updates main\ndeb %s/debian-security bookworm-security main\n' \
    "$MIRROR" "$MIRROR" "$MIRROR" > "$dir/etc/apt/sources.list"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | podman import -q - "$BASE" >/dev/null
  rm -rf "$dir"; trap - EXIT
}

build() {
  tools
  base
  # the CA bundle this host's pip trusts (a TLS-intercepting proxy's CA included), for pip inside
  local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}} secret=()
  [[ -r $ca ]] && secret=(--secret "id=cacert,src=$ca")
  log "building $IMAGE from $repo/Dockerfile (first time: ~20 min, mostly Horovod)"
  podman build --isolation "$ISOLATION" "${secret[@]}" -t "$IMAGE" "$repo"
  log "built $IMAGE: $(podman image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=si)B"
}

root_id() { stat -L -c %d:%i "$1" 2>/dev/null; }   # a process's root dir names its container

inside() {  # pids of live processes whose root is the container's root $1
  local p
  for p in /proc/[0-9]*; do
    [[ $(root_id "$p/root/") == "$1" ]] && echo "${p#/proc/}"
  done
  return 0
}

run() {
  (($#)) || die "usage: container.sh run CMD [ARG...]"
  podman image exists "$IMAGE" || die "no image '$IMAGE' here: build it with 'make container'"
  local c mnt id rc=0 left
  c=$(buildah from --pull=false -q "$IMAGE")
  # shellcheck disable=SC2064
  trap "buildah umount '$c' >/dev/null 2>&1; buildah rm '$c' >/dev/null 2>&1" EXIT
  mnt=$(buildah mount "$c")   # held mounted, so its root's identity is the one the run sees
  id=$(root_id "$mnt/")
  buildah run --isolation "$ISOLATION" "${CT_ENV[@]/#/--env=}" "$c" -- \
    /lhccnn/recipes/minislurm/entrypoint.sh "$@" || rc=$?
  # daemons detach from the command; with a shared process table they would outlive it here
  left=$(inside "$id")
  if [[ -n $left ]]; then
    log "error: left on the host by the container: $(ps -o pid=,comm= -p "${left//$'\n'/,}" | xargs)"
    kill -9 $left 2>/dev/null || true
    ((rc != 0)) || rc=1
  fi
  exit "$rc"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build | run CMD [ARG...]" >&2; exit 2 ;;
esac
