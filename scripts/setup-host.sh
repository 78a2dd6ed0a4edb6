#!/usr/bin/env bash
# Make this Debian/Ubuntu host ready for pyoverlay: packages, the Python venv, kernel modules, dockerd.
# Usage: scripts/setup-host.sh [--test]   (--test adds what the test suite needs: etcd, iperf3, registry,
#        prometheus, graphviz (dot, for `status --graph`), tcpdump, and Docker 26 and 28 unpacked under
#        /var/cache/pyoverlay/engines by scripts/fetch-engine.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "setup-host.sh: run as root (sudo)" >&2; exit 1; }

packages=(docker.io iptables busybox-static curl python3 python3-venv wireguard-go)
[ "${1:-}" = "--test" ] && packages+=(etcd-server etcd-client iperf3 tcpdump docker-registry debootstrap make debian-archive-keyring prometheus graphviz)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd; the tests run their own
if [ "${1:-}" = "--test" ] && command -v systemctl >/dev/null && systemctl is-active -q etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
# likewise prometheus: the metrics lab test runs its own, in the lab's underlay namespace
if [ "${1:-}" = "--test" ] && command -v systemctl >/dev/null && systemctl is-active -q prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi

# Lab tests also run on Docker 26 and 28 (scripts/test.sh's matrix), unpacked beside the system's
# (fetched once, then cached). A failed fetch (offline) is not fatal here: its tests then skip, or fail
# on CI, saying why.
if [ "${1:-}" = "--test" ]; then
  for v in 26 28; do
    scripts/fetch-engine.sh "$v" >/dev/null ||
      echo "setup-host.sh: could not fetch Docker $v; its lab tests will skip" >&2
  done
fi

modprobe -q vxlan 2>/dev/null || true
modprobe -q br_netfilter 2>/dev/null || true

extras=""; [ "${1:-}" = "--test" ] && extras="[test]"
marker=".venv/.installed${extras:+-test}"
if [ ! -x .venv/bin/pyoverlay ] || [ ! -e "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e ".${extras}"
  touch "$marker"
fi

if ! docker_cmd=$(command -v docker) || ! "$docker_cmd" info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null && sleep 1 && docker info >/dev/null 2>&1; then
    :
  else
    echo "starting dockerd"
    # without the caller's descriptors: a lock it holds (flock … scripts/test.sh) would stay held by dockerd
    (
      for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] && [ "$fd" -lt 255 ]; then eval "exec $fd<&-"; fi
      done
      exec nohup dockerd >/var/log/dockerd.log 2>&1
    ) &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/dockerd.log" >&2; exit 1; }
  fi
fi
