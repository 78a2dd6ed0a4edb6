"""Core services the HTTP layer calls: IPAM and the network driver."""
