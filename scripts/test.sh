#!/usr/bin/env bash
# The whole test suite: unit, store contract, netlink, integration (real etcd + dockerd) and lab tiers.
# Installs what it needs first. Extra arguments go to pytest (e.g. -m "not lab", -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh --test
exec .venv/bin/pytest -p no:cacheprovider "$@" tests
