#!/bin/sh
# Install and configure podman so it can build and run the imqd Dockerfile on this
# kind of machine (Debian bookworm, root, hybrid cgroup v1 hierarchy, no Docker engine).
#
# Idempotent: packages are only installed when a command is missing, and the config
# is only written when the setting is absent. Needs root.
#
# Pitfalls this script exists for (see deploy/container.md, "Testing with podman"):
#   * crun (podman's default OCI runtime on Debian) fails to start containers on this
#     host's hybrid cgroup layout; runc works. We make runc the default runtime here,
#     and the tests still pass `--runtime runc` explicitly so they do not depend on it.
#   * podman's default `nofile` ulimit for containers is refused by this kernel
#     ("setrlimit RLIMIT_NOFILE: operation not permitted"); `default_ulimits = []`
#     in containers.conf makes podman inherit the caller's limits instead.
set -eu

CONF=/etc/containers/containers.conf

if [ "$(id -u)" -ne 0 ]; then
    echo "podman-setup: must run as root" >&2
    exit 1
fi

missing=""
for cmd in podman runc debootstrap; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
    echo "podman-setup: installing podman runc debootstrap (missing:$missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # With recommends: podman build needs netavark/containernetworking-plugins for the
    # network of RUN steps, and fuse-overlayfs/catatonit are what was tested here.
    apt-get install -y -q podman runc debootstrap
fi

mkdir -p /etc/containers
if [ ! -f "$CONF" ]; then
    cat >"$CONF" <<'EOF'
# Written by imqd scripts/podman-setup.sh.
[containers]
# The kernel here refuses podman's default nofile ulimit; inherit the caller's limits.
default_ulimits = []

[engine]
# crun fails on this host's hybrid cgroup v1 layout; runc works.
runtime = "runc"
EOF
    echo "podman-setup: wrote $CONF"
elif ! grep -q '^[[:space:]]*default_ulimits' "$CONF"; then
    # Add the setting under an existing [containers] table, or append the table.
    if grep -q '^\[containers\]' "$CONF"; then
        sed -i '/^\[containers\]/a default_ulimits = []' "$CONF"
    else
        printf '\n[containers]\ndefault_ulimits = []\n' >>"$CONF"
    fi
    echo "podman-setup: added default_ulimits = [] to $CONF"
fi

# Smoke check: podman answers and uses a storage driver.
podman --runtime runc info --format '{{.Store.GraphDriverName}}' >/dev/null
echo "podman-setup: ok ($(podman --version), $(runc --version | head -n1))"
