"""An in-memory Dataplane for the middle test tier and the scale benchmark: the same methods and the
same observable state as driver.Dataplane (devices per VNI, veths per endpoint, FDB/neighbour entries),
recorded instead of programmed. tests/netlink/test_dataplane_contract.py holds both to one contract."""

from __future__ import annotations

import threading

from driver import DataplaneError, PeerChanges, PeerState
from driver.announce import announcement
from driver.names import check_vni, veth_names


class MemoryDataplane:
    def __init__(self) -> None:
        self.networks: dict[int, dict[str, object]] = {}  # vni -> settings
        self.endpoints: dict[str, tuple[int, str, int]] = {}  # endpoint id -> (vni, mac, mtu)
        self.peers: dict[int, PeerState] = {}
        self.secured: dict[
            str, tuple[str, tuple[str, ...]]
        ] = {}  # endpoint id -> its port's (MAC, addresses)
        self.plugged: set[str] = set()  # endpoints whose container side Docker moved into a container
        self.host_addresses: dict[int, tuple[str, str]] = {}  # vni -> (address CIDR, MAC): exposed here
        self.calls: list[tuple[str, object]] = []  # (method, main argument), in order
        self.peer_reads = 0  # read_peers calls: what the event loop costs the kernel
        self.announced: list[tuple[int, str, str]] = []  # (vni, ip, mac) of every announce, in order
        self.fail_vnis: set[int] = set()  # ensure_network on these raises, as a kernel error would
        self._lock = threading.Lock()
        self.vteps = MemoryVteps()
        self.sealed = MemorySealed()

    def ensure_network(self, vni: int, mtu: int, local_ip: str, port: int = 4789) -> None:
        check_vni(vni)
        with self._lock:
            self.calls.append(("ensure_network", vni))
            if vni in self.fail_vnis:
                raise DataplaneError(f"VNI {vni}: injected failure")
            self.networks[vni] = {"mtu": mtu, "local_ip": local_ip, "port": port}
            self.peers.setdefault(vni, PeerState())

    def delete_network(self, vni: int) -> None:
        with self._lock:
            self.calls.append(("delete_network", vni))
            self.networks.pop(vni, None)
            self.peers.pop(vni, None)
            self.host_addresses.pop(vni, None)
            # the veths' bridge ports live in the network's namespace: they go with it
            self.endpoints = {e: v for e, v in self.endpoints.items() if v[0] != vni}

    def ensure_host_address(self, vni: int, address: str | None, mac: str | None = None) -> None:
        with self._lock:
            if vni not in self.networks:
                raise DataplaneError(f"VNI {vni}: set host address: bridge not found")
            wanted = (address, mac or "") if address is not None else None
            if self.host_addresses.get(vni) != wanted:
                self.calls.append(("ensure_host_address", (vni, address)))
            if wanted is None:
                self.host_addresses.pop(vni, None)
            else:
                self.host_addresses[vni] = wanted

    def host_address(self, vni: int) -> tuple[str, str] | None:
        with self._lock:
            return self.host_addresses.get(vni)

    def network_vnis(self) -> set[int]:
        with self._lock:
            return set(self.networks)

    def has_network(self, vni: int) -> bool:
        with self._lock:
            return vni in self.networks

    def join_endpoint(
        self, vni: int, endpoint_id: str, mac: str, mtu: int, addresses: tuple[str, ...] = ()
    ) -> str:
        with self._lock:
            if vni in self.networks and self.endpoints.get(endpoint_id) == (vni, mac, mtu):
                self.calls.append(("join_endpoint", endpoint_id))
                return f"poc{endpoint_id[:12]}"
        return self.ensure_endpoint(vni, endpoint_id, mac, mtu, addresses)

    def ensure_endpoint(
        self, vni: int, endpoint_id: str, mac: str, mtu: int, addresses: tuple[str, ...] = ()
    ) -> str:
        veth_names(endpoint_id)  # ValueError for an id no veth can be named after, as in the kernel
        with self._lock:
            self.calls.append(("ensure_endpoint", endpoint_id))
            if vni not in self.networks:
                raise DataplaneError(f"VNI {vni}: bridge not found")
            self.endpoints[endpoint_id] = (vni, mac, mtu)
            self.secured[endpoint_id] = (mac, tuple(addresses))
        return f"poc{endpoint_id[:12]}"

    def secure_endpoints(self, vni: int, endpoints: dict[str, tuple[str, tuple[str, ...]]]) -> list[str]:
        with self._lock:
            self.calls.append(("secure_endpoints", vni))
            for endpoint_id, value in endpoints.items():
                if self.endpoints.get(endpoint_id, (None,))[0] == vni:
                    self.secured[endpoint_id] = value
        return []

    def delete_endpoint(self, endpoint_id: str, vni: int | None = None) -> None:
        veth_names(endpoint_id)
        with self._lock:
            self.calls.append(("delete_endpoint", endpoint_id))
            self.endpoints.pop(endpoint_id, None)
            self.secured.pop(endpoint_id, None)
            self.plugged.discard(endpoint_id)

    def settle(self, timeout: float | None = None) -> bool:
        return True  # deletions here are immediate: nothing is ever deferred

    def delete_retired_veths(self) -> list[str]:
        with self._lock:
            self.calls.append(("delete_retired_veths", None))
        return []

    def announce(self, vni: int, ip: str, mac: str) -> None:
        with self._lock:
            self.calls.append(("announce", ip))
            if vni not in self.networks:
                raise DataplaneError(f"VNI {vni}: announce {ip} at {mac}: bridge not found")
            try:
                announcement(ip, mac)  # a malformed address fails as in the kernel dataplane
            except ValueError as exc:
                raise DataplaneError(f"VNI {vni}: announce {ip} at {mac}: {exc}") from exc
            self.announced.append((vni, ip, mac))

    def endpoint_ids_prefixes(self) -> set[str]:
        with self._lock:
            return {endpoint_id[:12] for endpoint_id in self.endpoints}

    def loose_endpoint_ids_prefixes(self) -> set[str]:
        with self._lock:
            return {endpoint_id[:12] for endpoint_id in self.endpoints if endpoint_id not in self.plugged}

    def plug(self, endpoint_id: str) -> None:
        """What Docker does at Join: the container side moves into the container."""
        with self._lock:
            self.plugged.add(endpoint_id)

    def read_peers(self, vni: int) -> PeerState:
        with self._lock:
            self.peer_reads += 1
            if vni not in self.networks:
                raise DataplaneError(f"VNI {vni}: read peers: device not found")
            return self.peers[vni]

    def apply_peers(self, vni: int, changes: PeerChanges) -> list[str]:
        with self._lock:
            if vni not in self.networks:
                return [f"VNI {vni}: apply peers: device not found"] if changes else []
            if changes:
                self.calls.append(("apply_peers", vni))
            state = self.peers[vni]
            self.peers[vni] = PeerState(
                fdb=(state.fdb - changes.del_fdb) | changes.add_fdb,
                neigh=(state.neigh - changes.del_neigh) | changes.add_neigh,
            )
        return []


class MemoryVteps:
    """driver.vtep_filter.VtepFilter, recorded: the allowed addresses (None: no filter) and the port."""

    def __init__(self) -> None:
        self.addresses: set[str] | None = None
        self.port: int | None = None

    def allow(self, addresses: set[str], port: int) -> None:
        self.addresses, self.port = set(addresses), port

    def remove(self) -> bool:
        had, self.addresses, self.port = self.addresses is not None, None, None
        return had

    def allowed(self) -> set[str] | None:
        return None if self.addresses is None else set(self.addresses)


class MemorySealed:
    """driver.sealed_filter.SealedFilter, recorded: the (tunnel address, VNI) members (None: no filter)."""

    def __init__(self) -> None:
        self.members: set[tuple[str, int]] | None = None

    def allow(self, members: set[tuple[str, int]], port: int, device: str) -> None:
        self.members = set(members)

    def remove(self) -> bool:
        had, self.members = self.members is not None, None
        return had
