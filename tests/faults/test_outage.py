"""T13: containers start, stop and talk while etcd is away (issue 13). Every host reaches etcd through its own
proxy (outage.ProxiedLab), so a test cuts all hosts or one: during the cut, plain `docker run`s on a network
the host already has succeed, and what needs the store (a new network, a fixed address) is refused naming
etcd; a fixed address in a block another host holds is that host's to grant, and refused while it is away.
After the heal: the journal is published, outage-born containers on different hosts reach each other, no
two containers share an address, and nothing leaks. Figures: containers started per host, failures, time to
publish, time to cross-host traffic."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from plugin.docker_sync import STALE_SECONDS
from tests.lab.system import wait_until as wait_for
from tests.multihost.test_overlay import SLEEP, converge_ping, create_everywhere, networks

from .conftest import count, report
from .leaks import ROOT, assert_no_leaks, docker_endpoints, store_items
from .outage import (
    Started,
    assert_unique,
    endpoint_ids,
    ip_of,
    proxied_lab,  # noqa: F401 - the fixture
    start_during,
    wait_all_pairs,
    wait_published,
    wait_traffic,
)

pytestmark = [pytest.mark.lab, pytest.mark.faults]

SUBNET = "10.61.0.0/22"  # room for every host's blocks at the full counts
REFUSED_SUBNET = "10.62.0.0/24"
PUBLISH_TIMEOUT = 60.0


def host_id(h) -> str:
    return (h.workdir / "state" / "host-id").read_text().strip()


def blocks_of(lab, pool: str, holder: str) -> list[ipaddress.IPv4Network]:
    """The blocks of ``pool`` the store says host ``holder`` holds (/pyoverlay/v1/blocks/<pool>/<block>)."""
    prefix = f"{ROOT}blocks/{pool}/"
    found = []
    for key, value in store_items(lab, prefix).items():
        if value.get("host_id") == holder:
            found.append(ipaddress.ip_network(key[len(prefix) :]))
    return sorted(found)


def free_in(lab, blocks: list[ipaddress.IPv4Network], skip: int = 0) -> str:
    """An address of ``blocks`` no container holds and the store has not reserved (from the top down, away
    from where a host allocates first); ``skip`` passes over that many free ones."""
    taken = {k.rsplit("/", 1)[1] for k in store_items(lab, ROOT + "addresses/")}
    for h in lab.hosts:
        taken |= {e["ipv4"] for e in docker_endpoints(h).values() if e["ipv4"]}
    pool = ipaddress.ip_network(SUBNET)
    for block in reversed(blocks):
        for ip in reversed(list(block)):
            if ip in (pool.network_address, pool.broadcast_address) or str(ip) in taken:
                continue
            if skip == 0:
                return str(ip)
            skip -= 1
    raise AssertionError(f"no free address in {blocks}")


def free_in_own_blocks(lab, h) -> int:
    """How many addresses of the blocks h holds nothing has taken: what h can hand out while cut off."""
    taken = {k.rsplit("/", 1)[1] for k in store_items(lab, ROOT + "addresses/")}
    for each in lab.hosts:
        taken |= {e["ipv4"] for e in docker_endpoints(each).values() if e["ipv4"]}
    pool = ipaddress.ip_network(SUBNET)
    return sum(
        1
        for block in blocks_of(lab, SUBNET, host_id(h))
        for ip in block
        if ip not in (pool.network_address, pool.broadcast_address) and str(ip) not in taken
    )


def check_failures(started: dict[str, Started], free: dict[str, int], extra: dict[str, int]) -> None:
    """A plain run may fail only on a cut host whose own blocks are full (``free`` at the cut, less the
    ``extra`` addresses it gave out otherwise offline), and then with an error naming etcd."""
    for name, s in started.items():
        if not s.failed:
            continue
        assert name in free, f"{name}, not cut off, failed runs: {dict(s.failed)}"
        assert len(s.names) >= free[name] - extra.get(name, 0), (
            f"{name} failed runs after {len(s.names)} of the {free[name]} addresses free in its blocks: "
            f"{dict(s.failed)}"
        )
        assert all("etcd" in why and "full" in why for why in s.failed), f"{name}: {dict(s.failed)}"


def refused_naming_etcd(h, image: str, fixed_ip: str) -> dict[str, float]:
    """`network create` and `run --ip` on h (cut off etcd) fail naming etcd; seconds each took."""
    took = {}
    for what, args in {
        "network create": ("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay"),
        "run --ip": ("run", "-d", "--name", "fixed", "--network", "pre", "--ip", fixed_ip, image, *SLEEP),
    }.items():
        t = time.monotonic()
        if what == "network create":
            proc = h.docker(*args, "--subnet", REFUSED_SUBNET, "during", check=False)
        else:
            proc = h.docker(*args, check=False)
        took[what] = round(time.monotonic() - t, 2)
        assert proc.returncode != 0 and "etcd" in proc.stderr, f"{h.name} {what}: {proc.returncode} {proc}"
    h.docker("rm", "-f", "fixed", check=False)  # the container Docker created before the network failed
    return took


def after_heal(p, born: dict[str, list[str]], present: set[str], absent: set[str], a, b) -> dict[str, object]:
    """From the heal: seconds until the store holds ``present`` and lacks ``absent``, and until the first
    outage-born container of host a pings the first of host b (both measured at once)."""
    lab = p.lab
    published: dict[str, object] = {}

    def publish() -> None:
        try:
            published["s"] = wait_published(lab, present, absent, PUBLISH_TIMEOUT)
        except AssertionError as exc:
            published["error"] = exc

    target = ip_of(b, born[b.name][0], "pre")
    healed = time.monotonic()
    p.heal(lab.hosts)
    watcher = threading.Thread(target=publish)
    watcher.start()
    wait_traffic(a, born[a.name][0], target)
    traffic = time.monotonic() - healed
    watcher.join()
    if "error" in published:
        raise published["error"]  # type: ignore[misc]
    return {"publish_s": round(float(published["s"]), 2), "traffic_s": round(traffic, 2)}


def published_lines(lab, hosts) -> dict[str, str]:
    """Each host's last agent log line saying it published its journal (a count and seconds). The line is
    written when the whole journal is out, which may be after the store already holds every endpoint
    (wait_published): wait for it."""
    lines: dict[str, str] = {}

    def said_all() -> bool:
        for h in hosts:
            said = [x for x in h.agent_log().splitlines() if "published" in x]
            if said:
                lines[h.name] = said[-1][-160:]
        return len(lines) == len(hosts)

    try:
        wait_for(said_all, PUBLISH_TIMEOUT, "the 'published' log lines")
    except Exception as exc:  # noqa: BLE001 - say whose log lacks it
        quiet = [h for h in hosts if h.name not in lines]
        raise AssertionError(
            f"{quiet[0].name}: no 'published' line in the agent log\n{quiet[0].agent_log_tail(30)}"
        ) from exc
    return lines


def checked_or_failure(lab, members: dict[str, list[str]]) -> tuple[dict, AssertionError | None]:
    """settle_and_check's figures, or what failed (raised by the caller after its figures are out)."""
    try:
        return settle_and_check(lab, members), None
    except AssertionError as exc:
        return {"check_failed": str(exc)[:300]}, exc


def settle_and_check(lab, born_and_old: dict[str, list[str]]) -> dict[str, int]:
    """All pairs reach each other, nothing leaked, every address is unique; the pair and address counts."""
    pairs, lost_first = wait_all_pairs(lab, born_and_old, "pre")
    assert_no_leaks(lab, timeout=STALE_SECONDS + 60)  # room for a listing that hangs once (30 s)
    assert not [k for k in store_items(lab) if REFUSED_SUBNET.split("/")[0] in k], "the refused network"
    assert all("during" not in networks(h) for h in lab.hosts)
    # a fixed address asked of a block's holder is a claims/<pool>/<ip> key until granted or refused
    wait_for(lambda: not store_items(lab, ROOT + "claims/"), 30, "no claim left in the store")
    return {
        "pairs_reached": pairs,
        "pairs_lost_in_first_round": lost_first,
        "addresses_unique": assert_unique(lab),
    }


def test_all_hosts_cut_off_etcd_start_containers_and_converge(proxied_lab):  # noqa: F811
    n_hosts = count("t13_hosts", 3, 2)
    seconds = count("t13_outage_s", 60, 12)
    limit = count("t13_per_host", 200, 30)
    p = proxied_lab(n_hosts)
    lab = p.lab
    h1, h2, last = lab.hosts[0], lab.hosts[1], lab.hosts[-1]
    create_everywhere(lab, "pre", "--subnet", SUBNET)
    for h in lab.hosts:
        h.docker("run", "-d", "--name", f"old{h.name}", "--network", "pre", lab.image, *SLEEP)
    h1.docker("run", "-d", "--name", "bridged", lab.image, *SLEEP)  # on the default bridge: connected later
    h1.docker("run", "-d", "--name", "both", "--network", "pre", lab.image, *SLEEP)
    converge_ping(h1, "oldh1", ip_of(h2, "oldh2", "pre"))
    gone = endpoint_ids(h1, {"both"}) | endpoint_ids(last, {f"old{last.name}"})
    free = {h.name: free_in_own_blocks(lab, h) for h in lab.hosts}

    p.cut(lab.hosts)
    down_at = time.monotonic()
    took = refused_naming_etcd(h1, lab.image, "10.61.3.250")
    for what, args in {
        "network connect": ("network", "connect", "pre", "bridged"),
        "network disconnect": ("network", "disconnect", "pre", "both"),
        "rm -f": ("rm", "-f", f"old{last.name}"),
    }.items():
        t = time.monotonic()
        proc = (h1 if what != "rm -f" else last).docker(*args, check=False)
        took[what] = round(time.monotonic() - t, 2)
        assert proc.returncode == 0, f"{what} with etcd away: {proc.stderr}"
    started = start_during(lab, lab.hosts, "pre", down_at + seconds - time.monotonic(), limit, "o")
    born = {name: s.names for name, s in started.items()}
    failed = {name: dict(s.failed) for name, s in started.items() if s.failed}
    assert all(born.values()), f"a host started nothing during the outage: {failed}"
    present = endpoint_ids(h1, {"bridged"})
    for h in lab.hosts:
        present |= endpoint_ids(h, set(born[h.name]))
    outage_s = time.monotonic() - down_at

    healed = after_heal(p, born, present, gone, h1, h2)
    lines = published_lines(lab, lab.hosts)
    members = {h.name: [*born[h.name], *([f"old{h.name}"] if h is not last else [])] for h in lab.hosts}
    members["h1"].append("bridged")
    checked, failure = checked_or_failure(lab, members)
    report(
        "T13",
        f"all {n_hosts} hosts cut off etcd {outage_s:.0f} s",
        started_per_host={k: len(v) for k, v in born.items()},
        free_in_own_blocks_at_cut=free,
        run_s_median={k: round(sorted(s.took)[len(s.took) // 2], 2) for k, s in started.items()},
        failed=failed,
        refused_naming_etcd=["network create", "run --ip"],
        request_s=took,
        **healed,
        published=lines,
        **checked,
        leaks=0 if failure is None else "not checked",
    )
    if failure is not None:
        raise failure
    check_failures(started, free, {"h1": 1})  # h1 connected "bridged" offline


def test_one_host_cut_off_etcd_others_carry_on_and_its_blocks_stay_its_own(proxied_lab):  # noqa: F811
    seconds = count("t13_outage_s", 60, 12)
    limit = count("t13_per_host", 200, 30)
    p = proxied_lab(2)
    lab = p.lab
    a, b = lab.hosts
    create_everywhere(lab, "pre", "--subnet", SUBNET)
    for h in lab.hosts:
        h.docker("run", "-d", "--name", f"old{h.name}", "--network", "pre", lab.image, *SLEEP)
    converge_ping(a, "oldh1", ip_of(b, "oldh2", "pre"))
    a_blocks = blocks_of(lab, SUBNET, host_id(a))
    assert a_blocks, f"{a.name} holds no block of {SUBNET}: {store_items(lab, ROOT + 'blocks/')}"

    # online, a's block is a's to grant: b's fixed address in it goes through the store and a answers
    granted_ip = free_in(lab, a_blocks)
    t = time.monotonic()
    b.docker("run", "-d", "--name", "granted", "--network", "pre", "--ip", granted_ip, lab.image, *SLEEP)
    grant_s = time.monotonic() - t

    free = {a.name: free_in_own_blocks(lab, a)}
    p.cut([a])
    down_at = time.monotonic()
    took = refused_naming_etcd(a, lab.image, free_in(lab, a_blocks))
    wanted = free_in(lab, a_blocks)
    t = time.monotonic()
    proc = b.docker(
        "run", "-d", "--name", "taken", "--network", "pre", "--ip", wanted, lab.image, *SLEEP, check=False
    )
    took["b run --ip in a's block"] = round(time.monotonic() - t, 2)
    assert proc.returncode != 0, f"{b.name} got {wanted} from {a.name}'s block while {a.name} was away"
    assert host_id(a) in proc.stderr or a.address in proc.stderr, f"the error names no host: {proc.stderr}"
    b.docker("rm", "-f", "taken", check=False)
    refusal = proc.stderr.strip().splitlines()[-1]
    started = start_during(lab, lab.hosts, "pre", down_at + seconds - time.monotonic(), limit, "o")
    born = {name: s.names for name, s in started.items()}
    failed = {name: dict(s.failed) for name, s in started.items() if s.failed}
    assert all(born.values()), f"a host started nothing during the outage: {failed}"
    present = endpoint_ids(a, set(born[a.name])) | endpoint_ids(b, set(born[b.name]))
    outage_s = time.monotonic() - down_at

    healed = after_heal(p, born, present, set(), a, b)
    lines = published_lines(lab, [a])
    members = {h.name: [*born[h.name], f"old{h.name}"] for h in lab.hosts}
    members[b.name].append("granted")
    checked, failure = checked_or_failure(lab, members)
    # a may hand the address to a container of its own while it is cut off (its block, its to give):
    # only b, which was refused it, must not hold it (addresses_unique checks the rest)
    holds = wanted in {e["ipv4"] for e in docker_endpoints(b).values()}
    assert not holds, f"{wanted}, refused to {b.name}, is held on {b.name}"
    report(
        "T13",
        f"{a.name} of 2 hosts cut off etcd {outage_s:.0f} s",
        started_per_host={k: len(v) for k, v in born.items()},
        free_in_own_blocks_at_cut=free,
        failed=failed,
        online_grant_s=round(grant_s, 2),
        refused_in_other_hosts_block=refusal,
        request_s=took,
        **healed,
        published=lines,
        **checked,
        leaks=0 if failure is None else "not checked",
    )
    if failure is not None:
        raise failure
    check_failures(started, free, {})
