#!/usr/bin/env bash
# Install everything imqd and its tests need on a fresh Debian 12 machine (run as root):
# the kernel-side tools (iptables, ipset, iproute2), traffic tools (iperf3, ping), the
# libnetfilter_queue headers that the netfilterqueue package compiles against,
# promtool (Debian's prometheus) and chromium for the tests of /metrics and the dashboard,
# npm to fetch the dashboard's chart library (scripts/fetch-dashboard-assets.sh),
# and a virtualenv in .venv with imqd installed editable plus its test extras.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in iptables ipset iproute2 iperf3 iputils-ping libnetfilter-queue-dev gcc python3-venv python3-dev libcap2-bin procps kmod \
           prometheus chromium fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
command -v npm >/dev/null || need_apt+=(npm)  # any npm will do (a machine may have Node.js from elsewhere)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# Before pip: the page's assets are package data
scripts/fetch-dashboard-assets.sh

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test,bench]'
echo "bootstrap: ready (.venv/bin/imqd)"
