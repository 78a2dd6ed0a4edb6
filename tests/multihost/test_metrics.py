"""A real Prometheus (Debian's package) scrapes the /metrics of two agents and is asked, through its own
HTTP API, for every series pyoverlay exports, after traffic gave them values.

Prometheus runs in the lab's underlay namespace (where etcd listens): the hosts' addresses are reachable
there, and each agent listens on METRICS_ADDR=:PORT inside its own host namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.system import wait_until as wait_for
from tests.multihost.test_overlay import SLEEP, converge_ping, create_everywhere, ip_of

pytestmark = pytest.mark.lab

PROMETHEUS = "/usr/bin/prometheus"
METRICS_PORT = 9464
SUBNET = "10.53.0.0/24"
FREE_PORT = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
FETCH = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())"


class Prometheus:
    """A Prometheus server in the lab's underlay namespace, with a generated config and a temp TSDB."""

    def __init__(self, lab, workdir: Path, targets: list[str]) -> None:
        self.lab = lab
        port = int(lab.underlay_run([sys.executable, "-c", FREE_PORT]).stdout)
        self.url = f"http://127.0.0.1:{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "pyoverlay", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{lab.underlay_netns}",
                "--",
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()

    def get(self, path: str) -> str:
        return self.lab.underlay_run([sys.executable, "-c", FETCH, self.url + path]).stdout

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        return (
            self.lab.underlay_run(
                [sys.executable, "-c", FETCH, self.url + "/-/ready"], check=False
            ).returncode
            == 0
        )

    def query(self, expr: str) -> list[dict]:
        """/api/v1/query: the instant vector's samples, each {"metric": {...}, "value": [t, "v"]}."""
        answer = json.loads(self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def show(expr: str, result: list[dict]) -> None:
    """Print a query's samples as Prometheus's console would."""
    print(f"> {expr}")
    for sample in result:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample["metric"].items()))
        print(f"  {{{labels}}} {sample['value'][1]}")


def by_instance(result: list[dict]) -> dict[str, float]:
    return {s["metric"]["instance"]: float(s["value"][1]) for s in result}


def test_prometheus_scrapes_both_agents_and_finds_every_series(make_lab, tmp_path):  # noqa: F811
    if not shutil.which(PROMETHEUS):
        if os.environ.get("CI"):
            pytest.fail(f"{PROMETHEUS} is missing on a CI runner: apt-get install prometheus")
        pytest.skip(f"{PROMETHEUS} is not installed (apt-get install prometheus)")
    started = time.monotonic()
    lab = make_lab(2, etcd=True)
    lab.start_agents(extra_env={"METRICS_ADDR": f":{METRICS_PORT}"})
    h1, h2 = lab.hosts
    targets = {f"{h.address}:{METRICS_PORT}": h for h in lab.hosts}
    prometheus = Prometheus(lab, tmp_path / "prometheus", list(targets))
    try:
        # traffic first: a network on both hosts, a container on each, one reaching the other
        create_everywhere(lab, "mx", "--subnet", SUBNET)
        h1.docker("run", "-d", "--name", "m1", "--network", "mx", lab.image, *SLEEP)
        h2.docker("run", "-d", "--name", "m2", "--network", "mx", lab.image, *SLEEP)
        converge_ping(h1, "m1", ip_of(h2, "m2", "mx"))
        # etcd restarted: every watch ends and is listed again
        lab.stop_etcd()
        time.sleep(1)
        lab.start_etcd()
        lab.wait_etcd()
        wait_for(prometheus.ready, 30, "prometheus ready", prometheus.proc, prometheus.log_path)

        def all_up() -> bool:
            return by_instance(prometheus.query('up{job="pyoverlay"}')) == dict.fromkeys(targets, 1.0)

        wait_for(all_up, 30, "both agents scraped")

        # One scrape of one agent holds the request series and the event loop's: one process serves both.
        body = lab.underlay_run(
            [sys.executable, "-c", FETCH, f"http://{h1.address}:{METRICS_PORT}/metrics"]
        ).stdout
        assert (
            'pyoverlay_plugin_request_duration_seconds_count{outcome="ok",type="NetworkDriver.Join"}' in body
        )
        assert "pyoverlay_event_loop_lag_revisions " in body and "pyoverlay_peer_entries{" in body

        requests, store = (
            "pyoverlay_plugin_request_duration_seconds",
            "pyoverlay_store_request_duration_seconds",
        )
        queries = {
            "requests": "sum by (instance, type) "
            f'({requests}_count{{type=~"NetworkDriver.(CreateEndpoint|Join)"}})',
            "latency": "histogram_quantile(0.99, sum by (instance, le) "
            f'({requests}_bucket{{type="NetworkDriver.CreateEndpoint"}}))',
            "lag": "pyoverlay_event_loop_lag_revisions",
            "restarts": "sum by (instance) (pyoverlay_watch_restarts_total)",
            "kernel": "sum by (instance) (pyoverlay_kernel_errors_total)",
            "entries": "pyoverlay_peer_entries",
            "pool": f'pyoverlay_pool_addresses_used{{pool="{SUBNET}"}} / pyoverlay_pool_addresses_capacity',
            "used": f'pyoverlay_pool_addresses_used{{pool="{SUBNET}"}}',
            "store": f"histogram_quantile(0.5, sum by (instance, le) (rate({store}_bucket[30s])))",
            "store_count": f'sum by (instance) ({store}_count{{operation="txn"}})',
        }

        def answered() -> dict[str, list[dict]]:
            return {name: prometheus.query(expr) for name, expr in queries.items()}

        def complete() -> bool:
            results = answered()
            restarts = by_instance(results["restarts"])
            return all(len({s["metric"]["instance"] for s in r}) == 2 for r in results.values()) and all(
                restarts.get(t, 0) > 0 for t in targets
            )

        wait_for(complete, 30, "every series from both agents")
        results = answered()
        print()
        for name, expr in queries.items():
            show(expr, results[name])

        requests = {
            (s["metric"]["instance"], s["metric"]["type"]): float(s["value"][1]) for s in results["requests"]
        }
        for target in targets:
            assert requests[(target, "NetworkDriver.CreateEndpoint")] >= 1
            assert requests[(target, "NetworkDriver.Join")] >= 1
        assert all(v >= 0 for v in by_instance(results["lag"]).values())
        assert all(v == 0 for v in by_instance(results["kernel"]).values())  # nothing failed in the kernel
        assert all(v >= 3 for v in by_instance(results["used"]).values())  # gateway and two containers
        assert all(v > 0 for v in by_instance(results["store_count"]).values())
        entries = {
            (s["metric"]["instance"], s["metric"]["kind"]): float(s["value"][1]) for s in results["entries"]
        }
        for target in targets:  # the other host's container and its flood entry; its container's address
            assert entries[(target, "fdb")] == 2 and entries[(target, "neighbour")] == 1
    finally:
        prometheus.stop()
        for h in lab.hosts:
            print(f"--- {h.name}\n{h.agent_log_tail(15)}")
    print(f"test took {time.monotonic() - started:.1f} s")
