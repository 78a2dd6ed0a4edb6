#!/usr/bin/env bash
# Build the agent image, turn it into a managed plugin's rootfs and (re)create plugin PLUGIN_NAME
# on the daemon that DOCKER_HOST names. Run `packaging/wheelhouse.sh` first (`make plugin` does).
set -euo pipefail
cd "$(dirname "$0")/.."

docker=${DOCKER:-docker}
name=${PLUGIN_NAME:-pyoverlay:latest}
base=${BASE:-python:3.11-slim-bookworm}
local_base=${LOCAL_BASE:-pyoverlay-base:bookworm}
image=${IMAGE:-pyoverlay-plugin:build}
dir=${PLUGIN_DIR:-build/plugin}  # rootfs + config.json; only `docker plugin create` reads it

# No registry reachable (offline lab host): fall back to a debootstrapped base, built once and cached.
if ! "$docker" image inspect "$base" >/dev/null 2>&1 && ! timeout 120 "$docker" pull "$base" >/dev/null; then
    echo "cannot pull $base: using $local_base" >&2
    packaging/build-base.sh "$local_base"
    base=$local_base
fi
# BuildKit where the client has it (buildx); the legacy builder otherwise (docker.io 20.10).
if [[ -z ${DOCKER_BUILDKIT:-} ]]; then
    if "$docker" buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
fi
"$docker" build --force-rm --build-arg BASE="$base" -t "$image" .

rm -rf "$dir" && mkdir -p "$dir/rootfs"
container=$("$docker" create "$image")
trap '"$docker" rm -f "$container" >/dev/null' EXIT
"$docker" export "$container" | tar -x -C "$dir/rootfs"
cp config.json "$dir/config.json"

"$docker" plugin rm -f "$name" >/dev/null 2>&1 || true
"$docker" plugin create "$name" "$dir"
echo "created plugin $name ($(du -sh "$dir/rootfs" | cut -f1) rootfs); enable it with: $docker plugin enable $name" >&2
