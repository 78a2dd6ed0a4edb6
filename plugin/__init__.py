"""pyoverlay's agent: Docker's NetworkDriver and IpamDriver protocols over a unix socket."""
