"""Every netlink test gets fresh throwaway namespaces and must leave nothing behind."""

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import netns as pyroute2_netns

from driver import Dataplane

from .nsutil import require, root_snapshot
from .wgutil import pair  # noqa: F401  (the WireGuard tests' two hosts)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Factory for namespaces named pyo-nl-<random>; all are deleted after the test, and checked."""
    require(os.geteuid() == 0, "netlink tests need root (network namespaces, devices, iptables)")
    before = root_snapshot()
    created: list[str] = []

    def make() -> str:
        name = f"pyo-nl-{secrets.token_hex(4)}"
        pyroute2_netns.create(name)
        created.append(name)
        return name

    yield make
    # a Dataplane in namespace X keeps each network in a namespace X-<vni>
    networks = [n for n in pyroute2_netns.listnetns() if any(n.startswith(f"{c}-") for c in created)]
    for name in created + networks:
        pyroute2_netns.remove(name)
    leftover = set(created) & set(pyroute2_netns.listnetns())
    assert not leftover, f"namespaces left behind: {leftover}"
    assert root_snapshot() == before, "a test changed devices or FORWARD rules outside its namespaces"


@pytest.fixture
def ns(make_netns: Callable[[], str]) -> str:
    """One throwaway namespace."""
    return make_netns()


@pytest.fixture
def dataplane(ns: str) -> Iterator[Dataplane]:
    """A Dataplane working in the throwaway namespace; its sockets are closed before the namespace goes."""
    with Dataplane(netns=ns) as dp:
        yield dp
