"""A multi-host Docker lab on one machine (see docs/lab.md)."""

from .host import CommandFailed, LabHost
from .image import IMAGE_TAG, build_image_tar
from .lab import Lab, LabUnavailable, check_machine
from .teardown import cleanup, cleanup_stale

__all__ = [
    "IMAGE_TAG",
    "CommandFailed",
    "Lab",
    "LabHost",
    "LabUnavailable",
    "build_image_tar",
    "check_machine",
    "cleanup",
    "cleanup_stale",
]
