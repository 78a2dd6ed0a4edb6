#!/usr/bin/env bash
# Install pyoverlay as a systemd service (legacy plugin) on this host, from this source tree:
# a venv in PREFIX (/opt/pyoverlay), the unit, and /etc/default/pyoverlay if there is none yet.
# Offline: `make wheelhouse` first (wheels for this host's Python 3.11) and pass WHEELHOUSE=build/wheelhouse.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${PREFIX:-/opt/pyoverlay}
command -v iptables >/dev/null || { echo "install iptables first (Debian: apt-get install iptables)" >&2; exit 1; }
python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet --upgrade ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} .
install -m 0644 packaging/pyoverlay.service /etc/systemd/system/pyoverlay.service
[[ -e /etc/default/pyoverlay ]] || install -m 0644 packaging/pyoverlay.default /etc/default/pyoverlay
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    systemctl enable pyoverlay.service
    systemctl restart pyoverlay.service  # new code; the datapath stays in the kernel meanwhile
else
    echo "systemd is not running: start $prefix/bin/pyoverlay serve yourself" >&2
fi
