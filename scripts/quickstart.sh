#!/usr/bin/env bash
# Set up and run pyoverlay on this host with the embedded single-host store, then show two containers
# talking over a pyoverlay network. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
scripts/apply-daemon-config.sh  # the one daemon setting: names of containers on other hosts

sock=/run/docker/plugins/pyoverlay.sock
answers() { curl -sf --unix-socket "$sock" -X POST http://plugin/Plugin.Activate >/dev/null 2>&1; }
if ! answers; then
  echo "starting the pyoverlay agent (log: /var/log/pyoverlay.log)"
  nohup .venv/bin/pyoverlay serve >>/var/log/pyoverlay.log 2>&1 &
  for _ in $(seq 1 100); do answers && break; sleep 0.1; done
  answers || { echo "the agent did not answer: see /var/log/pyoverlay.log" >&2; exit 1; }
fi

image=pyoverlay/busybox
if ! docker image inspect "$image" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" && cp /bin/busybox "$rootfs/bin/" && /bin/busybox --list | while read -r app; do
    [ "$app" = busybox ] || ln -sf busybox "$rootfs/bin/$app"; done
  tar -C "$rootfs" -c . | docker import --change 'CMD ["sh"]' - "$image" >/dev/null
  rm -rf "$rootfs"
fi

docker network inspect demo >/dev/null 2>&1 ||
  docker network create -d pyoverlay --ipam-driver pyoverlay demo
docker rm -f demo-box1 demo-box2 >/dev/null 2>&1 || true
docker run -d --rm --name demo-box1 --network demo "$image" sleep 3600 >/dev/null
docker run -d --rm --name demo-box2 --network demo "$image" sleep 3600 >/dev/null
echo "demo-box1 pings demo-box2 by name over the pyoverlay network 'demo':"
docker exec demo-box1 ping -c 3 demo-box2
echo
echo "pyoverlay is running. Try: docker run --rm -it --network demo $image sh"
echo "Clean up the demo: docker rm -f demo-box1 demo-box2 && docker network rm demo"
echo "Stop the agent (as root): $PWD/.venv/bin/pyoverlay stop"
echo "Start it again (as root): nohup $PWD/.venv/bin/pyoverlay serve >>/var/log/pyoverlay.log 2>&1 &"
