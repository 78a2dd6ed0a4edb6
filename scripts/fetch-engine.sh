#!/usr/bin/env bash
# Fetch a newer Docker engine from Debian, unpacked (never installed), for the lab: docker.io and its
# client docker-cli from the suite that carries the version, trixie's containerd and tini-static (as docker-init); runc stays the
# system's (trixie's needs glibc 2.38). Prints the engine folder; its bin/ goes first on dockerd's PATH.
# Usage: scripts/fetch-engine.sh 28|26      (idempotent: does nothing but print if already there)
# Env: PYOVERLAY_ENGINES (default /var/cache/pyoverlay/engines), DEBIAN_MIRROR (default: the system's).
set -euo pipefail

version="${1:-}"
case "$version" in
  28) suite=sid ;;    # 28.5.2 in unstable
  26) suite=trixie ;; # 26.1.5 in Debian 13
  *) echo "usage: $0 28|26" >&2; exit 2 ;;
esac
root="${PYOVERLAY_ENGINES:-/var/cache/pyoverlay/engines}"
dest="$root/$version"
if [ -x "$dest/bin/dockerd" ]; then echo "$dest"; exit 0; fi

[ "$(id -u)" = 0 ] || { echo "fetch-engine.sh: run as root" >&2; exit 1; }
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9 # one fetch at a time; a concurrent caller finds the engine made by the first
if [ -x "$dest/bin/dockerd" ]; then echo "$dest"; exit 0; fi

# The mirror the system already uses (deb822 URIs: or one-line sources), deb.debian.org otherwise.
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
fi
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) { print $i; exit } }')
fi
mirror="${mirror:-http://deb.debian.org/debian}"

# A private apt: own sources, lists and cache, so the system's apt state is neither read nor changed.
apt_dir="$root/.apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/preferences.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# Both suites always: one index serves every version (containerd and tini come from trixie).
cat >"$apt_dir/sources.list" <<EOF
deb [signed-by=$keyring] $mirror trixie main
deb [signed-by=$keyring] $mirror sid main
EOF
apt_opts=(
  -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::Etc::preferencesparts=$apt_dir/preferences.d" -o "Dir::Etc::preferences=$apt_dir/preferences"
  -o Acquire::Languages=none -o APT::Sandbox::User=root -qq
)
start=$(date +%s)
# A list older than a day is refreshed: unstable moves, and an old index names files the mirror dropped.
if [ -z "$(find "$apt_dir/lists" -maxdepth 1 -name '*_dists_sid_*Packages*' -mmin -1440)" ] ||
  [ -z "$(find "$apt_dir/lists" -maxdepth 1 -name '*_dists_trixie_*Packages*' -mmin -1440)" ]; then
  apt-get "${apt_opts[@]}" update
fi

work=$(mktemp -d "$root/.fetch-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" download "docker.io/$suite" "docker-cli/$suite" containerd/trixie tini/trixie)
mkdir "$work/root"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done

# bin/: everything dockerd looks up by name, in one folder for PATH (and the explicit daemon flags).
r="$work/root"
mkdir "$r/bin"
for f in usr/sbin/dockerd usr/bin/docker usr/sbin/docker-proxy usr/bin/containerd usr/bin/containerd-shim-runc-v2 \
  usr/bin/ctr; do
  [ -e "$r/$f" ] && ln -s "../$f" "$r/bin/$(basename "$f")"
done
ln -s ../usr/bin/tini-static "$r/bin/docker-init"
for f in bin/dockerd bin/containerd bin/containerd-shim-runc-v2 bin/docker-init; do
  [ -x "$r/$f" ] || { echo "fetch-engine.sh: $f missing from the packages" >&2; exit 1; }
done
got=$("$r/bin/dockerd" --version)
case "$got" in
  "Docker version $version."*) ;;
  *) echo "fetch-engine.sh: wanted Docker $version from $suite, got: $got" >&2; exit 1 ;;
esac
ls "$work"/*.deb | xargs -n1 basename >"$r/PACKAGES"
rm -rf "$dest"
mv "$r" "$dest"
echo "fetched $got into $dest in $(($(date +%s) - start))s" >&2
echo "$dest"
