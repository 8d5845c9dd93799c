# A Docker daemon for the image and compose tests, and the base images they name.
# Source it, then `start_test_docker`: it exports DOCKER_HOST and stops the daemon when
# `stop_test_docker` runs (scripts/test calls it on exit).
#
# No image registry is reachable here, so every image a Dockerfile or compose file names is
# made locally, as a TEST FIXTURE (scripts/docker-fixtures/): a Debian rootfs from
# debootstrap imported as debian:bookworm-slim, a Rust builder from it plus the toolchain
# this machine has, and nginx, PostgreSQL and Prometheus from their Debian packages under
# the tags the generated compose file names. Images and the debootstrap rootfs live under
# target/docker, so later runs on the same machine reuse them.

DOCKER_FIXTURES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker-fixtures"

start_test_docker() {
  ensure_packages dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap || return 1
  local root
  root="$(pwd)/target/docker"
  mkdir -p "$root"
  DOCKER_RUN_DIR=$(mktemp -d /tmp/flotilla-docker.XXXXXX)
  export DOCKER_RUN_DIR
  # overlay2 needs a file system that takes an overlay mount on it (an overlay file system,
  # as a container's own root often is, does not); vfs works anywhere, copying each layer.
  local driver=vfs probe="$root/overlay-probe"
  mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
    "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    driver=overlay2
  fi
  rm -rf "$probe"
  dockerd --storage-driver "$driver" --bridge none --iptables=false \
    --data-root "$root/data" --exec-root "$DOCKER_RUN_DIR/exec" \
    --pidfile "$DOCKER_RUN_DIR/docker.pid" --host "unix://$DOCKER_RUN_DIR/docker.sock" \
    >"$DOCKER_RUN_DIR/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$DOCKER_RUN_DIR/docker.sock"
  local i
  for i in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "dockerd did not start; its log:" >&2
    tail -20 "$DOCKER_RUN_DIR/dockerd.log" >&2
    return 1
  fi
  echo "docker daemon at $DOCKER_HOST (storage driver $driver, data in $root/data)" >&2
  make_fixture_images "$root"
}

stop_test_docker() {
  [ -n "${DOCKER_RUN_DIR:-}" ] || return 0
  local pid
  pid=$(cat "$DOCKER_RUN_DIR/docker.pid" 2>/dev/null || true)
  if [ -n "$pid" ]; then
    # Containers a failed test left behind go with the daemon.
    docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
  fi
  # The daemon may leave mounts (network namespaces) under its exec root: undo them first.
  grep -o " $DOCKER_RUN_DIR[^ ]*" /proc/mounts 2>/dev/null | sort -r \
    | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$DOCKER_RUN_DIR" 2>/dev/null || true
  unset DOCKER_RUN_DIR
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Builds scripts/docker-fixtures/NAME as TAG unless TAG exists.
fixture_image() {
  local name=$1 tag=$2
  have_image "$tag" && return 0
  echo "building test fixture image $tag" >&2
  docker build --network host -q -t "$tag" "$DOCKER_FIXTURES_DIR/$name" >/dev/null
}

make_fixture_images() {
  local root=$1
  if ! have_image debian:bookworm-slim; then
    local mirror
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    if [ ! -x "$root/rootfs-bookworm/bin/sh" ]; then
      echo "debootstrap bookworm from $mirror (test fixture base image)" >&2
      rm -rf "$root/rootfs-bookworm"
      debootstrap --variant=minbase bookworm "$root/rootfs-bookworm" "$mirror" >"$root/debootstrap.log" 2>&1 \
        || { tail -20 "$root/debootstrap.log" >&2; return 1; }
    fi
    tar -C "$root/rootfs-bookworm" -c . | docker import - debian:bookworm-slim >/dev/null
  fi
  if ! have_image rust:1.95-bookworm; then
    # The toolchain this machine builds with (rustup's, without its documentation).
    local toolchain context
    toolchain=$(rustc --print sysroot)
    context=$(mktemp -d "$root/rust-context.XXXXXX")
    cp -r "$DOCKER_FIXTURES_DIR/rust/Dockerfile" "$context/"
    mkdir -p "$context/toolchain" "$context/ca"
    (cd "$toolchain" && cp -a bin lib libexec etc "$context/toolchain/" 2>/dev/null || true)
    # The certificate authorities this machine adds (a proxy's, say), so that cargo in the
    # container reaches crates.io as cargo here does.
    cp /usr/local/share/ca-certificates/*.crt "$context/ca/" 2>/dev/null || true
    echo "building test fixture image rust:1.95-bookworm from $toolchain" >&2
    docker build --network host -q -t rust:1.95-bookworm "$context" >/dev/null
    local status=$?
    rm -rf "$context"
    [ $status -eq 0 ] || return 1
  fi
  fixture_image nginx nginx:1.27-alpine || return 1
  fixture_image postgres postgres:16-alpine || return 1
  fixture_image prometheus prom/prometheus:v2.55.1 || return 1
}
