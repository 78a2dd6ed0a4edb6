"""The per-network FORWARD rules of pyoverlay before each network had a namespace of its own.

Then a network's bridge lived in the host's namespace, where dockerd's br_netfilter sends every bridged
frame through FORWARD (policy DROP): one ACCEPT rule per network, tagged with a comment, let them pass.
Bridged frames no longer meet the host's iptables; this finds and removes such rules when a network built
that way moves into its namespace (driver/dataplane.py).
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


def delete_forward_rules(vni: int, netns: str | None = None) -> None:
    """Remove every FORWARD rule carrying this network's comment (no error if there is none)."""
    for rule in network_rules(vni, netns):
        _run(netns, ["-D", *rule[1:]], f"delete {CHAIN} rule of {bridge_name(vni)}")
