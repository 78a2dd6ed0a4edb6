"""The one exception type the datapath raises."""


class DataplaneError(Exception):
    """A kernel or firewall operation failed; the message names the interface and the operation."""
