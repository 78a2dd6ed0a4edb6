"""Gratuitous ARP: tell the neighbours on a network's bridge that an IP now has this MAC.

The VXLAN device answers ARP itself (proxy ARP), so an announcement never crosses hosts: each host sends
its own on its own bridge. Frames the host transmits through the bridge device are flooded to the ports
and never learned (the bridge learns only from frames received on a port).
"""

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
MIN_FRAME = 60  # Ethernet minimum without the FCS


def garp_frame(ip: str, mac: str) -> bytes:
    """A gratuitous ARP request: broadcast, sender = target = ip, sender hardware address = mac."""
    hw = bytes.fromhex(mac.replace(":", ""))
    if len(hw) != 6:
        raise ValueError(f"invalid MAC address {mac!r}")
    address = ipaddress.IPv4Address(ip).packed
    ethernet = BROADCAST + hw + ETH_P_ARP.to_bytes(2, "big")
    # htype Ethernet, ptype IPv4, hlen 6, plen 4, op request
    arp = bytes.fromhex("0001080006040001") + hw + address + b"\0" * 6 + address
    return (ethernet + arp).ljust(MIN_FRAME, b"\0")


def send_later(send: Callable[[], None], ifname: str, delays: Iterable[float]) -> None:
    """Call send again after each delay (seconds from now), from a short-lived thread; a failure (the
    bridge or namespace went meanwhile) only ends the repeats."""
    delays = sorted(delays)
    if not delays:
        return

    def repeat() -> None:
        start = time.monotonic()
        for delay in delays:
            time.sleep(max(0.0, start + delay - time.monotonic()))
            try:
                send()
            except Exception as exc:  # pyroute2's namespace helper raises its own types too
                log.debug("%s: announce again: %s", ifname, exc)
                return

    threading.Thread(target=repeat, name=f"announce-{ifname}", daemon=True).start()
