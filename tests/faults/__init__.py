"""The fault matrix (issue 12): each case injects faults or hostile input into real dockerds, etcd and
kernels, prints its figures, and fails on any loss, leak or duplicate."""
