"""Kernel datapath for pyoverlay: bridges, VXLAN devices, veths, FDB and neighbour entries.

The only package that imports pyroute2. It never imports plugin/ or kvstore/.
"""

from .dataplane import Dataplane
from .errors import DataplaneError
from .peers import Peer, PeerChanges, PeerState, desired_state, diff

__all__ = ["Dataplane", "DataplaneError", "Peer", "PeerChanges", "PeerState", "desired_state", "diff"]
