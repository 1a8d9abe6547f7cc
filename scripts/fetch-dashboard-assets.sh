#!/bin/sh
# Fetch the dashboard's browser libraries (uPlot, pinned with its hash in imqd/dashboard/package-lock.json)
# from the npm registry the machine's npm is configured for, into imqd/dashboard/static/vendor/, where
# `pip install` takes them as package data. Never committed (.gitignore). Run by scripts/bootstrap.sh and
# by the Dockerfile's builder stage; needs npm (Debian: apt-get install npm).
#
# Idempotent: does nothing when vendor/ already holds what the lock file pins (IMQD_ASSETS_REFRESH=1 forces).
set -eu
cd "$(dirname "$0")/.."

SRC=imqd/dashboard
DEST=$SRC/static/vendor
if [ "${IMQD_ASSETS_REFRESH:-0}" != 1 ] && [ -f "$DEST/uPlot.iife.min.js" ] \
        && cmp -s "$SRC/package-lock.json" "$DEST/package-lock.json"; then
    exit 0
fi
command -v npm >/dev/null || { echo "fetch-dashboard-assets: npm missing (apt-get install npm)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cp "$SRC/package.json" "$SRC/package-lock.json" "$TMP/"
(cd "$TMP" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
mkdir -p "$DEST"
cp "$TMP/node_modules/uplot/dist/uPlot.iife.min.js" "$TMP/node_modules/uplot/dist/uPlot.min.css" "$DEST/"
cp "$TMP/node_modules/uplot/LICENSE" "$DEST/uPlot.LICENSE"
cp "$SRC/package-lock.json" "$DEST/package-lock.json"
echo "fetch-dashboard-assets: uPlot $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$TMP/node_modules/uplot/package.json") in $DEST"
