"""Per-network iptables rules that let bridged traffic through when dockerd sets FORWARD to DROP.

With br_netfilter loaded and bridge-nf-call-iptables=1 (dockerd turns both on), frames crossing a bridge
traverse the FORWARD chain as "-i br -o br"; dockerd's default policy there is DROP. One ACCEPT rule per
network, tagged with a comment so it can be found and removed again, inserted at the top of FORWARD:
Docker's own rules never get the chance to drop it first.
"""

import shlex
import shutil
import subprocess

from .errors import DataplaneError
from .names import bridge_name

NETNS_RUN_DIR = "/run/netns"
CHAIN = "FORWARD"
_TIMEOUT_S = 30


def rule_comment(vni: int) -> str:
    """The comment that marks the rule of one network."""
    return f"pyoverlay vni {vni}"


def forward_rule(vni: int) -> list[str]:
    """The rule specification (without chain) accepting traffic bridged within one network."""
    bridge = bridge_name(vni)
    return ["-i", bridge, "-o", bridge, "-m", "comment", "--comment", rule_comment(vni), "-j", "ACCEPT"]


def _run(netns: str | None, args: list[str], operation: str) -> str:
    if shutil.which("iptables") is None:
        raise DataplaneError(f"{operation}: the iptables command is not installed")
    command = ["iptables", "-w", *args]
    if netns is not None:
        # iptables has no namespace option; nsenter keeps us from changing this process's namespace.
        command = ["nsenter", f"--net={NETNS_RUN_DIR}/{netns}", *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataplaneError(f"{operation}: {shlex.join(command)}: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise DataplaneError(f"{operation}: {shlex.join(command)} exited {result.returncode}: {detail}")
    return result.stdout


def network_rules(vni: int, netns: str | None = None) -> list[list[str]]:
    """The FORWARD rules (as -S argument lists, chain included) that carry this network's comment."""
    listing = _run(netns, ["-S", CHAIN], f"list {CHAIN} rules for vni {vni}")
    comment = rule_comment(vni)
    rules = []
    for line in listing.splitlines():
        if not line.startswith(f"-A {CHAIN} "):
            continue
        args = shlex.split(line)
        for index, arg in enumerate(args[:-1]):
            if arg == "--comment" and args[index + 1] == comment:
                rules.append(args)
                break
    return rules


def ensure_forward_rule(vni: int, netns: str | None = None) -> None:
    """Make exactly one correct ACCEPT rule for the network exist at the top of FORWARD."""
    wanted = ["-A", CHAIN, *forward_rule(vni)]
    found = network_rules(vni, netns)
    keep = next((rule for rule in found if rule == wanted), None)
    for rule in found:
        if rule is not keep:  # stale or duplicate rule of this network
            _run(netns, ["-D", *rule[1:]], f"delete stale {CHAIN} rule of {bridge_name(vni)}")
    if keep is None:
        _run(netns, ["-I", CHAIN, "1", *forward_rule(vni)], f"insert {CHAIN} rule for {bridge_name(vni)}")


def delete_forward_rules(vni: int, netns: str | None = None) -> None:
    """Remove every FORWARD rule carrying this network's comment (no error if there is none)."""
    for rule in network_rules(vni, netns):
        _run(netns, ["-D", *rule[1:]], f"delete {CHAIN} rule of {bridge_name(vni)}")


# -- ip6tables: the same rule for a network with IPv6 (dockerd >= 27 sets ip6tables FORWARD to DROP too) ---


def _run6(netns: str | None, args: list[str], operation: str) -> str | None:
    """ip6tables as _run runs iptables; None when ip6tables is not installed (then nothing can have set
    an IPv6 FORWARD policy to drop our traffic either)."""
    if shutil.which("ip6tables") is None:
        return None
    command = ["ip6tables", "-w", *args]
    if netns is not None:
        command = ["nsenter", f"--net={NETNS_RUN_DIR}/{netns}", *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataplaneError(f"{operation}: {shlex.join(command)}: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise DataplaneError(f"{operation}: {shlex.join(command)} exited {result.returncode}: {detail}")
    return result.stdout


def network_rules6(vni: int, netns: str | None = None) -> list[list[str]]:
    """As network_rules, in ip6tables."""
    listing = _run6(netns, ["-S", CHAIN], f"list ip6tables {CHAIN} rules for vni {vni}") or ""
    comment = rule_comment(vni)
    return [
        args
        for args in (shlex.split(line) for line in listing.splitlines() if line.startswith(f"-A {CHAIN} "))
        if any(a == "--comment" and b == comment for a, b in zip(args, args[1:], strict=False))
    ]


def ensure_forward_rule6(vni: int, netns: str | None = None) -> None:
    """As ensure_forward_rule, in ip6tables (no-op without ip6tables)."""
    wanted = ["-A", CHAIN, *forward_rule(vni)]
    found = network_rules6(vni, netns)
    keep = next((rule for rule in found if rule == wanted), None)
    for rule in found:
        if rule is not keep:
            _run6(netns, ["-D", *rule[1:]], f"delete stale ip6tables {CHAIN} rule of {bridge_name(vni)}")
    if keep is None:
        _run6(
            netns,
            ["-I", CHAIN, "1", *forward_rule(vni)],
            f"insert ip6tables {CHAIN} rule for {bridge_name(vni)}",
        )


def delete_forward_rules6(vni: int, netns: str | None = None) -> None:
    """As delete_forward_rules, in ip6tables (no-op without ip6tables)."""
    for rule in network_rules6(vni, netns):
        _run6(netns, ["-D", *rule[1:]], f"delete ip6tables {CHAIN} rule of {bridge_name(vni)}")
