"""Where the name service sends the questions that are not the cluster's: the host's own resolvers."""

from __future__ import annotations

import ipaddress
import logging
import os
import time

import dns.exception
import dns.message
import dns.query
import dns.resolver

from .answers import failure

log = logging.getLogger(__name__)

RESOLV_CONF = "/etc/resolv.conf"
BUDGET = 3.0  # seconds for all servers together: Docker's embedded DNS gives up on us after 4
SHUNNED_SECONDS = 30.0  # a server that timed out is asked last for this long


class Upstreams:
    """The configured list, else the host's resolv.conf (read again when it changes), never this name
    service itself. A server that failed is tried after the others for a while."""

    def __init__(self, configured: tuple[str, ...], own_address: str, resolv_conf: str = RESOLV_CONF):
        self.configured = [split_server(s) for s in configured]  # "address" or "address:port"
        self.own_address = own_address
        self.resolv_conf = resolv_conf
        self._seen: tuple[float, list[tuple[str, int]]] = (-1.0, [])
        self._failed: dict[tuple[str, int], float] = {}  # server -> when it last failed

    def servers(self) -> list[tuple[str, int]]:
        if self.configured:
            return [s for s in self.configured if s != (self.own_address, 53)]
        try:
            mtime = os.stat(self.resolv_conf).st_mtime
        except OSError:
            return []
        if mtime != self._seen[0]:
            found = _resolv_conf_servers(self.resolv_conf)
            self._seen = (mtime, [(s, 53) for s in found if s != self.own_address])
        return self._seen[1]

    def forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        """The first upstream answer within the budget, else SERVFAIL (Docker then asks its next server)."""
        now = time.monotonic()
        servers = sorted(self.servers(), key=lambda s: now - self._failed.get(s, -1e9) < SHUNNED_SECONDS)
        deadline = now + BUDGET
        for index, (address, port) in enumerate(servers):
            timeout = (deadline - time.monotonic()) / (len(servers) - index)  # a share of what is left
            if timeout <= 0.05:
                break
            try:
                if tcp:
                    return dns.query.tcp(query, address, timeout=timeout, port=port)
                return dns.query.udp(query, address, timeout=timeout, port=port, ignore_unexpected=True)
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("upstream %s:%d: %s", address, port, exc)
                self._failed[(address, port)] = time.monotonic()
        return failure(query)


def split_server(server: str) -> tuple[str, int]:
    address, _, port = server.partition(":")
    return address, int(port or 53)


def fallback_servers(
    configured: tuple[str, ...], own_address: str, resolv_conf: str = RESOLV_CONF
) -> list[str]:
    """The resolvers a container can reach itself, to name after the name service in the daemon's `dns`
    setting: when the agent is down, Docker asks them instead. Loopback ones (systemd-resolved's
    127.0.0.53) are of no use inside a container, and a port cannot be given there."""
    servers = [split_server(s) for s in configured] or [(a, 53) for a in _resolv_conf_servers(resolv_conf)]
    return [
        a
        for a, port in servers
        if port == 53 and a != own_address and not ipaddress.ip_address(a).is_loopback
    ]


def _resolv_conf_servers(resolv_conf: str) -> list[str]:
    try:
        return [str(s) for s in dns.resolver.Resolver(filename=resolv_conf).nameservers]
    except (dns.resolver.NoResolverConfiguration, OSError):
        return []
