"""Session-wide: with ``PYOVERLAY_ENGINE`` set (scripts/test.sh's engine passes), only the tests that run
a dockerd (those using the lab's ``lab_image_tar``, as ``make_lab`` does) are collected, each once: the
others do not depend on Docker's version and already ran in the system engine's pass."""

from __future__ import annotations

import pytest

from tests.lab.engines import session_version


def pytest_report_header() -> str:
    return f"docker engine: {session_version() or 'system'} (PYOVERLAY_ENGINE)"


def _engine_pass_runs(item: pytest.Item) -> bool:
    if "lab_image_tar" not in getattr(item, "fixturenames", ()):
        return False
    # A test run on both stores runs on etcd only: what Docker sends and gets does not depend on the store.
    callspec = getattr(item, "callspec", None)
    return callspec is None or "embedded" not in callspec.params.values()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if session_version() is None:
        return
    keep = [item for item in items if _engine_pass_runs(item)]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
