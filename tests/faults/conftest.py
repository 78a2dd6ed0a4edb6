"""Counts are parameters of the tier: CI runs the small ones; ``FAULTS_FULL=1`` runs the issue's counts;
``FAULTS_<NAME>=N`` sets one (e.g. ``FAULTS_T1_RUNS=200``). Figures are printed and, when
``FAULTS_REPORT`` names a file, appended to it as JSON lines (one per case) for the closing table."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401

# name: (full count from the issue, CI count)
COUNTS: dict[str, tuple[int, int]] = {}


def count(name: str, full: int, ci: int) -> int:
    """The count for ``name``: FAULTS_<NAME> if set, else ``full`` under FAULTS_FULL, else ``ci``."""
    COUNTS[name] = (full, ci)
    explicit = os.environ.get(f"FAULTS_{name.upper()}")
    if explicit:
        return int(explicit)
    return full if os.environ.get("FAULTS_FULL") else ci


def report(case: str, what: str, **figures: object) -> None:
    """Print one case's figures (pytest shows them with -s, and for failures) and keep them for the note."""
    line = {"case": case, "what": what, **figures, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"FAULTS {case}: {what} | " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    path = os.environ.get("FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


@pytest.fixture
def figures():
    """``figures(case, what, **numbers)``: see report()."""
    return report
