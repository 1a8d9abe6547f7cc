#!/bin/sh
# Build a Debian bookworm base image locally, for machines that can reach the Debian
# archive but not a container registry (this project's CI). Real Docker users do not
# need this: the Dockerfile's FROM defaults to the official debian:bookworm-slim.
#
#   scripts/build-base-image.sh [IMAGE]        default IMAGE: localhost/imqd-base:bookworm
#   podman build --build-arg BASE=localhost/imqd-base:bookworm -t imqd .
#   scripts/build-base-image.sh --print-mirror  the Debian mirror it would use, and exit
#
# Idempotent: does nothing when IMAGE already exists (set IMQD_BASE_REBUILD=1 to force).
# Needs root, podman, debootstrap.
#
# The Debian mirror is the host's own: the first enabled `deb` source of a release suite
# (not -security/-updates/-backports) in /etc/apt/sources.list.d/*.sources (deb822 `URIs:`),
# else /etc/apt/sources.list and sources.list.d/*.list (one-line `deb [opts] URI suite ...`).
# IMQD_DEBIAN_MIRROR overrides it; IMQD_APT_ETC (default /etc/apt) is where to look. No mirror
# name is kept in this repository: the machine's configuration says which one it may reach.
#
# Pitfalls:
#   * `--variant=minbase` is close to debian:bookworm-slim (apt, dpkg, bash, no
#     systemd); we additionally strip docs/man/locales/apt lists like the slim image,
#     which saves ~40 MB.
#   * debootstrap leaves the host's /etc/resolv.conf and hostname in the tree; the
#     runtime bind-mounts its own, so we empty them rather than bake the host's in.
#   * This machine reaches PyPI through a TLS-intercepting egress proxy whose CA is only
#     in the host's trust store (/usr/local/share/ca-certificates), so pip inside the
#     build fails with CERTIFICATE_VERIFY_FAILED. We copy the host's local CAs and its CA
#     bundle into the base image and point pip at the bundle (/etc/pip.conf); apt's
#     ca-certificates package later re-creates the bundle including those CAs. Official
#     debian:bookworm-slim builds are unaffected (the Dockerfile has nothing of this).
#     Env IMQD_BASE_CA_DIR (default /usr/local/share/ca-certificates; empty: skip).
#   * `podman import` gives an image with no CMD/ENV; we set PATH and CMD like the
#     official image so `podman run IMAGE` behaves the same.
set -eu

# host_mirror: print the URI of the host's first enabled Debian release source, or nothing.
host_mirror() {
    etc=${IMQD_APT_ETC:-/etc/apt}
    for f in "$etc"/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: stanzas separated by blank lines; keys are case-insensitive.
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no" && uri != "" && release && uri !~ /-security\/?$/) {
                    print uri; found = 1; exit
                }
                types = ""; uri = ""; enabled = ""; release = 0
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1)
                if (key == "types:") { types = ""; for (i = 2; i <= NF; i++) types = types " " $i
                                       sub(/^ /, "", types) }
                else if (key == "uris:") uri = $2
                else if (key == "enabled:") enabled = tolower($2)
                else if (key == "suites:") { for (i = 2; i <= NF; i++) if ($i !~ /[-\/]/) release = 1 }
            }
            END { if (!found) flush() }
        ' "$f" | head -n 1 | grep . && return 0
    done
    for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # one-line: deb [opts] URI suite components...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '
            $1 == "deb" && NF >= 3 && $3 !~ /[-\/]/ && $2 !~ /-security\/?$/ { print $2; exit }
        ' | grep . && return 0
    done
    return 0
}

if [ "${1:-}" = "--print-mirror" ]; then
    MIRROR=${IMQD_DEBIAN_MIRROR:-$(host_mirror)}
    if [ -z "$MIRROR" ]; then
        echo "build-base-image: no Debian source in ${IMQD_APT_ETC:-/etc/apt}; set IMQD_DEBIAN_MIRROR" >&2
        exit 1
    fi
    echo "$MIRROR"
    exit 0
fi

IMAGE=${1:-localhost/imqd-base:bookworm}
MIRROR=${IMQD_DEBIAN_MIRROR:-$(host_mirror)}
PODMAN=${PODMAN:-podman}
if [ -z "$MIRROR" ]; then
    echo "build-base-image: no enabled Debian release source in ${IMQD_APT_ETC:-/etc/apt} (sources.list.d/*.sources," \
        "sources.list, sources.list.d/*.list); set IMQD_DEBIAN_MIRROR to the mirror to debootstrap from" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "build-base-image: must run as root (debootstrap)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap missing (scripts/podman-setup.sh)" >&2; exit 1; }

OLD_ID=""
if $PODMAN image exists "$IMAGE"; then
    if [ "${IMQD_BASE_REBUILD:-0}" != 1 ]; then
        echo "build-base-image: $IMAGE already exists"
        exit 0
    fi
    OLD_ID=$($PODMAN image inspect --format '{{.Id}}' "$IMAGE")
fi

ROOT=$(mktemp -d /var/tmp/imqd-base.XXXXXX)
trap 'rm -rf "$ROOT" "$ROOT.log"' EXIT
trap 'exit 130' INT TERM

echo "build-base-image: debootstrap bookworm into $ROOT (from $MIRROR)"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    tail -n 30 "$ROOT.log" >&2
    exit 1
}

# Slim it down like debian:*-slim: apt lists and caches, docs, man pages, locales.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
    "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/log/*.log \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
    "$ROOT"/usr/share/locale/* "$ROOT"/tmp/* "$ROOT"/var/tmp/*
# The same dpkg excludes the slim image ships, so later apt-get installs stay slim too.
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
cat >"$ROOT/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
CA_DIR=${IMQD_BASE_CA_DIR-/usr/local/share/ca-certificates}
if [ -n "$CA_DIR" ] && ls "$CA_DIR"/*.crt >/dev/null 2>&1; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates" "$ROOT/etc/ssl/certs"
    cp "$CA_DIR"/*.crt "$ROOT/usr/local/share/ca-certificates/"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOT/etc/pip.conf"
    echo "build-base-image: trusting the host's local CAs from $CA_DIR (pip: /etc/pip.conf)"
fi
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/hostname"

echo "build-base-image: importing as $IMAGE"
tar --numeric-owner -C "$ROOT" -c . | $PODMAN import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - "$IMAGE" >/dev/null
if [ -n "$OLD_ID" ]; then
    # The replaced image is now untagged; drop it unless images built on it still use it.
    $PODMAN rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
echo "build-base-image: done: $($PODMAN image inspect --format '{{.Size}}' "$IMAGE") bytes"
