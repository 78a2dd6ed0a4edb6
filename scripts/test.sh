#!/usr/bin/env bash
# The whole test suite: unit, store contract, netlink, integration (real etcd + dockerd) and lab tiers on
# the system's Docker (20.10), then the tests that run a dockerd (integration and multi-host tiers) again on
# each newer engine of the matrix (docs/docker-versions.md). Installs what it needs first.
# Extra arguments go to every pytest run (e.g. -m "not lab", -k name).
# Env: PYOVERLAY_MATRIX (default "26 28"; empty: the system's engine only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh --test

matrix="${PYOVERLAY_MATRIX-26 28}"
status=0
summary=()
run() { # run LABEL PYTEST-ARGS...: one pytest pass; its time into the summary, its failure into $status
  local label=$1 start rc=0
  shift
  start=$(date +%s)
  .venv/bin/pytest -p no:cacheprovider "$@" || rc=$?
  [ "$rc" = 5 ] && rc=0 # nothing collected (e.g. -m "not lab" on an engine pass)
  summary+=("$label: $(($(date +%s) - start)) s, exit $rc")
  [ "$rc" = 0 ] || status=$rc
}

PYOVERLAY_ENGINE=system run "Docker system (20.10), all tiers" "$@" tests
for version in $matrix; do
  # Its own session (not a parametrized fixture): a daemon of one engine never meets another's state,
  # and a failure names its engine in this summary. tests/conftest.py keeps only the dockerd tests.
  PYOVERLAY_ENGINE=$version run "Docker $version, integration + multihost" \
    "$@" tests/integration tests/multihost
done
printf '%s\n' "${summary[@]}"
exit "$status"
