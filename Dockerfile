# imqd: IMQ-style traffic shaper (NFQUEUE + userspace HTB) for a Linux router.
#
#   docker build -t imqd .
#   docker run -d --name imqd --network host --cap-drop ALL --cap-add NET_ADMIN \
#       -e IMQD_QUEUES=0:3 -v imqd-state:/var/lib/imqd imqd
#
# See deploy/container.md for what it changes on the host and how to upgrade.
#
# Build arguments:
#   BASE              base image of both stages. Default: the official debian:bookworm-slim.
#                     Offline CI builds one with scripts/build-base-image.sh and passes
#                     --build-arg BASE=localhost/imqd-base:bookworm.
#   IPTABLES_BACKEND  nft (default) or legacy: must match what the host's own `iptables`
#                     uses, or the rules land in a table the operator's tools do not show.
#
# Podman: build with `--format docker`, or the OCI image format silently drops the
# HEALTHCHECK below.

ARG BASE=debian:bookworm-slim

# ---------------------------------------------------------------------------
# builder: compile NetfilterQueue against libnetfilter-queue-dev and install imqd
# into a virtualenv at /opt/imqd. Only the venv leaves this stage.
FROM ${BASE} AS builder

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev libnetfilter-queue-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/imqd

# Dependencies first, from pyproject.toml alone, so a code change does not recompile
# NetfilterQueue or re-download FastAPI.
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && /opt/imqd/bin/pip install -r /tmp/requirements.txt

COPY . ./
# The dashboard's chart library (uPlot, pinned in imqd/dashboard/package-lock.json) from npm: package data
# for the pip install below. A build context that has it already (scripts/bootstrap.sh ran) skips npm.
RUN if ! scripts/fetch-dashboard-assets.sh 2>/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends npm \
        && scripts/fetch-dashboard-assets.sh && rm -rf /var/lib/apt/lists/*; \
    fi \
 && test -s imqd/dashboard/static/vendor/uPlot.iife.min.js
RUN /opt/imqd/bin/pip install --no-deps . \
 # from / : in /src, `import imqd` would find the source tree instead of what was installed
 && cd / && /opt/imqd/bin/python -c 'import imqd.cli, imqd.qdisc._htbfast, netfilterqueue' \
 # the dashboard's page and chart library were installed as package data
 && /opt/imqd/bin/python -c 'import imqd.dashboard as d, pathlib; p = pathlib.Path(d.__file__).parent / "static"; assert (p / "index.html").is_file() and (p / "vendor" / "uPlot.iife.min.js").is_file(), p' \
 # pip/setuptools are not needed at run time: ~15 MB.
 && /opt/imqd/bin/pip uninstall -y -q pip setuptools

# ---------------------------------------------------------------------------
# final: python3, iptables and libnetfilter-queue1; no compiler, no headers.
FROM ${BASE}

ARG IPTABLES_BACKEND=nft
ARG IMQD_UID=10001

# Non-root with CAP_NET_ADMIN, portable across Docker and Podman: Docker does not put
# --cap-add capabilities in the ambient set of a non-root user, so the capability is
# granted by *file* capabilities on the programs that need it: imqd's own copy of
# the interpreter (/opt/imqd/bin/python3.11, so /usr/bin/python3 stays unprivileged)
# the xtables multi-binaries (iptables, ip6tables, -save, -restore) and ipset (imqd's
# address sets). They only take effect when the container is given NET_ADMIN (its bounding set).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 iptables ipset libnetfilter-queue1 libcap2-bin \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/dpkg.log /var/log/apt \
 && case "$IPTABLES_BACKEND" in \
        # legacy iptables talks to the kernel through a raw socket: it also needs CAP_NET_RAW
        # (then run with --cap-add NET_ADMIN --cap-add NET_RAW).
        nft) setcap cap_net_admin+ep /usr/sbin/xtables-nft-multi ;; \
        legacy) setcap cap_net_admin,cap_net_raw+ep /usr/sbin/xtables-legacy-multi ;; \
        *) echo "IPTABLES_BACKEND must be nft or legacy, not '$IPTABLES_BACKEND'" >&2; exit 1 ;; \
    esac \
 && setcap cap_net_admin+ep /usr/sbin/ipset \
 && update-alternatives --set iptables "/usr/sbin/iptables-$IPTABLES_BACKEND" \
 && update-alternatives --set ip6tables "/usr/sbin/ip6tables-$IPTABLES_BACKEND" \
 && groupadd --gid "$IMQD_UID" imqd \
 # --no-log-init: a large uid would otherwise grow sparse lastlog/faillog files in the layer
 && useradd --uid "$IMQD_UID" --gid imqd --home-dir /var/lib/imqd --no-create-home --no-log-init \
        --shell /usr/sbin/nologin imqd \
 && install -d -o imqd -g imqd -m 0750 /var/lib/imqd

COPY --from=builder /opt/imqd /opt/imqd

# The venv's interpreter is a symlink to /usr/bin/python3; replace it by a private copy
# that carries the capability (an xattr on the file: a symlink cannot carry it).
RUN cd /opt/imqd/bin \
 && rm -f python python3 python3.11 \
 && cp /usr/bin/python3.11 python3.11 \
 && ln -s python3.11 python3 \
 && ln -s python3.11 python \
 && setcap cap_net_admin+ep python3.11 \
 && getcap python3.11 | grep -q cap_net_admin

ENV PATH=/opt/imqd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    # iptables-legacy's lock file; the default /run/xtables.lock is root-only. (The
    # lock never coordinates with the host's iptables anyway: /run is not shared.)
    XTABLES_LOCKFILE=/tmp/xtables.lock \
    IMQD_QUEUES=0:3 \
    IMQD_API=127.0.0.1:8000 \
    IMQD_CONFIG=/var/lib/imqd/imqd.yaml

USER imqd
WORKDIR /var/lib/imqd
VOLUME ["/var/lib/imqd"]

# Healthy when GET /healthz on IMQD_API answers 2xx (all workers alive). Runs the
# unprivileged /usr/bin/python3: no curl in the image, no capability needed. No proxy
# (an HTTP_PROXY in the environment must not capture a loopback request); 0.0.0.0 / ::
# (listen on all) are probed on loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/bin/python3", "-c", "import os, urllib.request as r\nh, _, p = (os.environ.get('IMQD_API') or '127.0.0.1:8000').rpartition(':')\nh = h.strip('[]')\nh = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h)\nr.build_opener(r.ProxyHandler({})).open('http://%s:%s/healthz' % ('[%s]' % h if ':' in h else h, p), timeout=4)"]

# imqd is PID 1 (exec form, no shell): it handles SIGTERM itself, removes its iptables
# rules, releases held packets and exits. Give it time: stop_grace_period / --time.
STOPSIGNAL SIGTERM
ENTRYPOINT ["imqd", "run", "--apply-rules"]
CMD []
