"""Hypothesis strategies over Docker's remote NetworkDriver and IpamDriver protocols (libnetwork's
drivers/remote/api and ipams/remote/api): a valid-shaped message per call, then mutated (a field deleted,
replaced by garbage of another JSON type, a nasty string, an extra field), plus raw bodies, unknown paths
and wrong methods. A drawn ``FuzzRequest`` is one HTTP request on the plugin socket."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from hypothesis import strategies as st

NETWORK_CALLS = (
    "/NetworkDriver.GetCapabilities",
    "/NetworkDriver.CreateNetwork",
    "/NetworkDriver.AllocateNetwork",
    "/NetworkDriver.FreeNetwork",
    "/NetworkDriver.DeleteNetwork",
    "/NetworkDriver.CreateEndpoint",
    "/NetworkDriver.EndpointOperInfo",
    "/NetworkDriver.DeleteEndpoint",
    "/NetworkDriver.Join",
    "/NetworkDriver.Leave",
    "/NetworkDriver.DiscoverNew",
    "/NetworkDriver.DiscoverDelete",
    "/NetworkDriver.ProgramExternalConnectivity",
    "/NetworkDriver.RevokeExternalConnectivity",
)
IPAM_CALLS = (
    "/IpamDriver.GetCapabilities",
    "/IpamDriver.GetDefaultAddressSpaces",
    "/IpamDriver.RequestPool",
    "/IpamDriver.ReleasePool",
    "/IpamDriver.RequestAddress",
    "/IpamDriver.ReleaseAddress",
)
CALLS = ("/Plugin.Activate", *NETWORK_CALLS, *IPAM_CALLS)

# a megabyte-long value of one of these: store keys and lookups on the way, not only validation
LARGE_FIELDS = (b"NetworkID", b"PoolID", b"Pool", b"Address")
GENERIC = "com.docker.network.generic"
MAC_OPTION = "com.docker.network.endpoint.macaddress"
GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


@dataclass(frozen=True)
class Targets:
    """IDs the generator aims at, so that mutated requests reach past "unknown network" into the
    services: the fuzz network made at the start (its pool, endpoints) and a few spare ids."""

    network_ids: tuple[str, ...]
    endpoint_ids: tuple[str, ...]
    subnets: tuple[str, ...]
    avoid: frozenset[str]  # the control network's ids and subnet: never drawn, so valid calls stay valid


@dataclass(frozen=True)
class FuzzRequest:
    kind: str  # "message", "raw", "path" or "method": what the figures count by
    method: str
    path: str
    body: bytes

    def __repr__(self) -> str:  # the falsifying example hypothesis prints: keep huge bodies readable
        shown = self.body if len(self.body) <= 400 else self.body[:400] + b"...(%d bytes)" % len(self.body)
        return f"FuzzRequest({self.kind}, {self.method} {self.path}, body={shown!r})"


NASTY_STRINGS = (
    "",
    " ",
    "\x00",
    "\n",
    "\t\r\n",
    "\ud800",  # a lone surrogate: valid in JSON's \u escape, not encodable as UTF-8
    "\ufeff",
    "é" * 3,
    "../../etc/passwd",
    "a/b",
    "/",
    "%2f",
    "-1",
    "0",
    "1e999",
    "NaN",
    "null",
    "true",
    "{}",
    "10.0.0.0/33",
    "10.0.0.0/-1",
    "10.0.0.1/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "0.0.0.0/32",
    "255.255.255.255/32",
    "256.1.1.1",
    "10.0.0.1",
    "10.0.0.1/",
    "::1",
    "::/0",
    "fe80::1%eth0",
    "fd00::/64",
    "ff:ff:ff:ff:ff:ff",
    "00:00:00:00:00:00",
    "01:00:5e:00:00:01",
    "zz:zz:zz:zz:zz:zz",
    "02:42:0a:00:00:02:03",
    "0242.0a00.0002",
    "0" * 64,
    "f" * 129,
)


@cache  # building and validating strategies costs more than drawing from them
def nasty_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY_STRINGS),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="ascii"), max_size=20),
        st.integers(1, 200_000).map(lambda n: "x" * n),  # huge strings without a huge shrink space
    )


@cache
def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([-1, 0, 2**31, 2**63, -(2**63) - 1, 10**400]),
        st.floats(allow_nan=False, allow_infinity=False),
        nasty_text(),
    )


@cache
def garbage() -> st.SearchStrategy[Any]:
    """Any JSON value, nested a little."""
    return st.recursive(
        scalars(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=12,
    )


@cache
def hex_id() -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@cache
def mac() -> st.SearchStrategy[str]:
    return st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
        lambda b: ":".join(f"{x:02x}" for x in b)
    )


@cache
def ipv4() -> st.SearchStrategy[str]:
    return st.ip_addresses(v=4).map(str)


@cache
def cidr(targets: Targets) -> st.SearchStrategy[str]:
    drawn = st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}")
    return st.one_of(st.sampled_from(targets.subnets), drawn).filter(lambda s: s not in targets.avoid)


@cache
def _messages(targets: Targets) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """A valid-shaped body per call, as dockerd sends it."""
    network_id = st.one_of(st.sampled_from(targets.network_ids), hex_id())
    endpoint_id = st.one_of(st.sampled_from(targets.endpoint_ids), hex_id())
    subnet = cidr(targets)
    ids = st.fixed_dictionaries({"NetworkID": network_id, "EndpointID": endpoint_id})
    ipam_data = st.fixed_dictionaries(
        {"AddressSpace": st.sampled_from(["pyoverlay", "default", ""]), "Pool": subnet},
        optional={"Gateway": subnet, "AuxAddresses": st.dictionaries(st.text(max_size=5), ipv4())},
    )
    generic = st.dictionaries(
        st.sampled_from(
            ["com.docker.network.driver.mtu", "com.docker.network.enable_ipv6", "encrypted", "foo"]
        ),
        st.one_of(st.sampled_from(["1400", "576", "9000", "true", "false"]), nasty_text()),
        max_size=2,
    )
    return {
        "/NetworkDriver.CreateNetwork": st.fixed_dictionaries(
            {
                "NetworkID": network_id,
                "Options": st.fixed_dictionaries(
                    {GENERIC: generic, "com.docker.network.enable_ipv6": st.booleans()}
                ),
                "IPv4Data": st.lists(ipam_data, max_size=2),
                "IPv6Data": st.just([]),
            }
        ),
        "/NetworkDriver.AllocateNetwork": st.fixed_dictionaries(
            {"NetworkID": network_id, "Options": st.just({}), "IPv4Data": st.just([])}
        ),
        "/NetworkDriver.FreeNetwork": st.fixed_dictionaries({"NetworkID": network_id}),
        "/NetworkDriver.DeleteNetwork": st.fixed_dictionaries({"NetworkID": network_id}),
        "/NetworkDriver.CreateEndpoint": st.fixed_dictionaries(
            {
                "NetworkID": network_id,
                "EndpointID": endpoint_id,
                "Interface": st.fixed_dictionaries(
                    {"Address": subnet, "AddressIPv6": st.just(""), "MacAddress": mac() | st.just("")}
                ),
                "Options": st.just({}),
            }
        ),
        "/NetworkDriver.EndpointOperInfo": ids,
        "/NetworkDriver.DeleteEndpoint": ids,
        "/NetworkDriver.Join": st.fixed_dictionaries(
            {
                "NetworkID": network_id,
                "EndpointID": endpoint_id,
                "SandboxKey": st.just("/var/run/docker/netns/0123456789ab"),
                "Options": st.just({}),
            }
        ),
        "/NetworkDriver.Leave": ids,
        "/NetworkDriver.DiscoverNew": st.fixed_dictionaries(
            {"DiscoveryType": st.integers(), "DiscoveryData": garbage()}
        ),
        "/NetworkDriver.DiscoverDelete": st.fixed_dictionaries(
            {"DiscoveryType": st.integers(), "DiscoveryData": garbage()}
        ),
        "/NetworkDriver.ProgramExternalConnectivity": st.fixed_dictionaries(
            {"NetworkID": network_id, "EndpointID": endpoint_id, "Options": st.just({})}
        ),
        "/NetworkDriver.RevokeExternalConnectivity": ids,
        "/IpamDriver.RequestPool": st.fixed_dictionaries(
            {"AddressSpace": st.sampled_from(["pyoverlay", "", "LocalDefault"]), "Pool": subnet},
            optional={"SubPool": subnet, "Options": st.just({}), "V6": st.booleans()},
        ),
        "/IpamDriver.ReleasePool": st.fixed_dictionaries({"PoolID": subnet}),
        "/IpamDriver.RequestAddress": st.fixed_dictionaries(
            {"PoolID": subnet},
            optional={
                "Address": ipv4(),
                "Options": st.one_of(st.just(GATEWAY), st.fixed_dictionaries({MAC_OPTION: mac()})),
            },
        ),
        "/IpamDriver.ReleaseAddress": st.fixed_dictionaries({"PoolID": subnet, "Address": ipv4()}),
    }


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value a mutation can hit: the root, each key and each list item."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    return found


def _with(value: Any, path: tuple, op: str, new: Any) -> Any:
    """``value`` with the place at ``path`` deleted, replaced, or given an extra key (a copy)."""
    if not path:
        if op == "extra" and isinstance(value, dict):
            return {**value, **new}
        return new if op != "delete" else None
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if not rest and op == "delete":
            del copy[head]
        else:
            copy[head] = _with(value[head], rest, op, new)
        return copy
    copy = list(value)
    if not rest and op == "delete":
        del copy[head]
    else:
        copy[head] = _with(value[head], rest, op, new)
    return copy


@cache
def _extra_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=12), garbage(), min_size=1, max_size=3)


@st.composite
def mutated(draw: st.DrawFn, message: dict[str, Any]) -> dict[str, Any]:
    for _ in range(draw(st.integers(0, 3))):  # 0: the valid-shaped message itself
        path = draw(st.sampled_from(_paths(message)))
        op = draw(st.sampled_from(["delete", "replace", "nasty", "extra"]))
        if op == "delete" and not path:
            op = "replace"
        new: Any
        if op == "extra":
            new = draw(_extra_fields())
        elif op == "nasty":
            new = draw(nasty_text())
        else:
            new = draw(garbage())
        message = _with(message, path, "replace" if op == "nasty" else op, new)
    return message


def _dumps(value: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes: the bytes are valid JSON, the string is not UTF-8
    return json.dumps(value).encode()


@cache
def raw_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"", b" ", b"\n", b"{", b"}", b"[]", b"null", b'"x"', b"0", b"{'a': 1}", b"NaN"]),
        st.text(max_size=50).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
        st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.tuples(st.sampled_from(LARGE_FIELDS), st.integers(1, 8)).map(  # large bodies
            lambda t: b'{"%s": "' % t[0] + b"1" * (t[1] << 20) + b'"}'
        ),
        garbage().map(_dumps),
    )


@st.composite
def fuzz_requests(draw: st.DrawFn, targets: Targets) -> FuzzRequest:
    messages = _messages(targets)
    kind = draw(st.sampled_from(["message"] * 14 + ["raw"] * 3 + ["path", "method"]))
    path = draw(st.sampled_from(CALLS))
    if kind == "message":
        base = draw(messages[path]) if path in messages else {}
        return FuzzRequest(kind, "POST", path, _dumps(draw(mutated(base))))
    if kind == "raw":
        return FuzzRequest(kind, "POST", path, draw(raw_bodies()))
    if kind == "method":
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
        return FuzzRequest(kind, method, path, b"{}")
    unknown = draw(
        st.one_of(
            st.sampled_from(["/", "/NetworkDriver.", "/IpamDriver.Nope", "/Plugin.Activate/", "/.."]),
            # printable: http.client refuses control characters in a URL. No "//": gunicorn reads what
            # follows as a host name (an absolute URI), before the app sees the path
            st.text(
                alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"),
                max_size=60,
            ).map(lambda s: "/" + s.replace(" ", "").lstrip("/")),
            st.sampled_from(CALLS).map(str.lower),
        ).filter(lambda p: p not in CALLS and p != "/pyoverlay.Timings")
    )
    return FuzzRequest(kind, "POST", unknown, b"{}")
