#!/usr/bin/env bash
# Build a local Debian bookworm base image (python3 + iptables) for hosts that cannot pull BASE.
# Usage: build-base.sh IMAGE   (does nothing if IMAGE already exists)
set -euo pipefail

image=${1:-pyoverlay-base:bookworm}
docker=${DOCKER:-docker}
if "$docker" image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi

# The host's own Debian mirror (on a lab host the only one reachable), else debootstrap's default.
sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
found=$(grep -vE '^\s*#' <<<"$sources" | grep -oE 'https?://[^ ]+/debian(/|\b)' | grep -v security | head -n1 || true)
mirror=${DEBIAN_MIRROR:-$found}

command -v debootstrap >/dev/null || { echo "$image: needs debootstrap (apt-get install debootstrap), as root" >&2; exit 1; }
root=$(mktemp -d /tmp/pyoverlay-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building $image with debootstrap ${mirror:+from $mirror}" >&2
debootstrap --variant=minbase --include=python3,iptables,ca-certificates bookworm "$root" ${mirror:+"$mirror"} >&2
rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
tar -C "$root" --numeric-owner -c . \
    | "$docker" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "built $image" >&2
