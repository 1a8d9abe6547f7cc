#!/bin/sh
# CI hook (called by .ci/run): make the container test (tests/integration/test_container.py)
# runnable: podman + runc + debootstrap installed and configured, offline base image built.
#
# Idempotent and fast when already done (a few `command -v` checks, one `grep`, one
# `podman image exists`). Not root: prints why and exits 0, the test then skips itself.
set -eu

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "ci-podman: not root; the container test will be skipped"
    exit 0
fi

scripts/podman-setup.sh
scripts/build-base-image.sh "${IMQD_TEST_BASE_IMAGE:-localhost/imqd-base:bookworm}"
