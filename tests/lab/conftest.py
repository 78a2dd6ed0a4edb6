"""Makes the lab fixtures available to tests under tests/lab."""

from .fixtures import lab_image_tar, make_lab  # noqa: F401
