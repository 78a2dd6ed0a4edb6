"""What the host's name service knows, kept current by two threads and read by the DNS server:

- NameIndex: the names of every endpoint of the networks bound here, per network, from the store (the
  event loop updates it from its watches: remote containers included);
- Askers: which networks a container asking a question is on, by the addresses it may ask from (Docker
  sync fills it from this host's daemon).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kvstore import Endpoint


def normalize(name: str) -> str:
    """DNS names compare without case and without the root's trailing dot."""
    return name.rstrip(".").lower()


class NameIndex:
    """network_id -> name -> addresses, and network_id -> address -> name (for PTR answers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, dict[str, tuple[str, ...]]] = {}
        self._reverse: dict[str, dict[str, str]] = {}
        self._network_names: dict[str, str] = {}  # network_id -> its name, normalized
        self.generation = 0  # counts changes: answers made from an older generation are stale

    def update(self, network_id: str, network_name: str, endpoints: Iterable[Endpoint]) -> None:
        """Replace what is known of one network."""
        names: dict[str, list[str]] = {}
        reverse: dict[str, str] = {}
        for endpoint in sorted(endpoints, key=lambda e: e.endpoint_id):
            if not endpoint.container_name:
                continue
            for address in (a for a in (endpoint.ip, endpoint.ip6) if a):  # IPv4 and IPv6 (canonical text)
                reverse[address] = endpoint.container_name
                for name in {normalize(n) for n in (endpoint.container_name, *endpoint.aliases) if n}:
                    names.setdefault(name, []).append(address)
        with self._lock:
            self._names[network_id] = {n: tuple(a) for n, a in names.items()}
            self._reverse[network_id] = reverse
            self._network_names[network_id] = normalize(network_name)
            self.generation += 1

    def drop(self, network_id: str) -> None:
        with self._lock:
            self._names.pop(network_id, None)
            self._reverse.pop(network_id, None)
            self._network_names.pop(network_id, None)
            self.generation += 1

    def lookup(self, network_ids: Iterable[str], qname: str) -> list[str]:
        """Addresses (IPv4 and IPv6) of a name on these networks: a plain name (``box2``) or one qualified
        by its network's name (``box2.ov``), as Docker's embedded DNS answers both."""
        name = normalize(qname)
        found: list[str] = []
        with self._lock:
            for network_id in sorted(network_ids):
                names = self._names.get(network_id, {})
                plain, _, suffix = name.rpartition(".")
                hits = names.get(name, ())
                if not hits and plain and suffix == self._network_names.get(network_id):
                    hits = names.get(plain, ())
                found.extend(a for a in hits if a not in found)
        return found

    def reverse(self, network_ids: Iterable[str], address: str) -> str | None:
        """The container name that holds an address on one of these networks."""
        with self._lock:
            for network_id in sorted(network_ids):
                name = self._reverse.get(network_id, {}).get(address)
                if name:
                    return name
        return None


class Askers:
    """Source address of a question -> the cluster networks of the container that asked. Docker's embedded
    DNS forwards from inside the container, so the source is one of the container's addresses (usually
    its docker_gwbridge one: pyoverlay gives containers no gateway). Every container of the host is here,
    those on no pyoverlay network with no networks."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._networks: dict[str, frozenset[str]] = {}
        self._asked = 0  # passes asked for by the name service
        self._answered = 0  # the latest request a replace() covers: its pass started after the request

    def networks(self, address: str) -> frozenset[str] | None:
        with self._changed:
            return self._networks.get(address)

    def ask(self) -> int:
        """A request for a Docker sync pass; wait_for(the ticket) then waits for a pass that began after."""
        with self._changed:
            self._asked += 1
            return self._asked

    def requests(self) -> int:
        """What a pass starting now covers (Docker sync reads it before it lists containers)."""
        with self._changed:
            return self._asked

    def replace(self, networks: dict[str, frozenset[str]], covers: int = 0) -> None:
        with self._changed:
            self._networks = dict(networks)
            self._answered = max(self._answered, covers)
            self._changed.notify_all()

    def wait_for(self, ticket: int, timeout: float) -> bool:
        """Block until a pass that began after ``ticket`` was asked has replaced the table; True if so."""
        with self._changed:
            return self._changed.wait_for(lambda: self._answered >= ticket, timeout)
