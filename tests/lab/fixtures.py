"""Pytest fixtures for lab tests; import them into a conftest.py:

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .image import build_image_tar
from .lab import Lab, LabUnavailable, check_machine
from .teardown import cleanup_stale


@pytest.fixture(scope="session")
def lab_image_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test image tarball, built once per session; skips the test if the machine cannot run a lab."""
    try:
        check_machine(etcd=False)
    except LabUnavailable as exc:
        _unavailable(exc)
    # Labs of earlier sessions that were killed before their teardown ran.
    cleanup_stale()
    return build_image_tar(tmp_path_factory.getbasetemp() / "lab-image")


def _unavailable(exc: LabUnavailable) -> None:
    """Skip the test, saying why; on CI, whose machine must run every lab, fail it."""
    if os.environ.get("CI"):
        pytest.fail(f"lab unavailable on CI, which must run it: {exc}")
    pytest.skip(f"lab unavailable: {exc}")


@pytest.fixture
def make_lab(lab_image_tar: Path, tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab(n_hosts=2, mtu=1500, etcd=True, engine=None, ...)`` returns a Lab that is up.

    ``engine="28"`` runs every host's dockerd from scripts/fetch-engine.sh's folder (a sequence gives one
    per host); a test whose engine is not fetched skips, or fails on CI.

    Every lab it made is torn down after the test, pass or fail. Names default to one unique per
    process and call, so concurrent pytest runs on one machine do not tear down each other's labs.
    """
    labs: list[Lab] = []

    def factory(n_hosts: int = 2, name: str | None = None, **kwargs: Any) -> Lab:
        name = name or f"l{os.getpid()}{chr(ord('a') + len(labs))}"
        kwargs.setdefault("workdir", tmp_path / f"lab-{name}")
        kwargs.setdefault("image_tar", lab_image_tar)
        lab = Lab(n_hosts, name, **kwargs)
        try:
            check_machine(lab.with_etcd, [h.engine.label for h in lab.hosts])
        except LabUnavailable as exc:  # e.g. engine="28" not fetched
            _unavailable(exc)
        labs.append(lab)
        lab.up()
        return lab

    yield factory
    errors = []
    for lab in reversed(labs):
        try:
            lab.down()
        except Exception as exc:  # noqa: BLE001 - tear down the others, then report
            errors.append(exc)
    if errors:
        raise errors[0]
