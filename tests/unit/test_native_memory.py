"""The agent pins glibc's mmap threshold (plugin/native_memory.py): big short-lived buffers stay in their
own mappings instead of being carved from, and fragmenting, the malloc arenas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A 256 KiB buffer, like asyncio's netlink receive buffer, allocated and freed a few times; prints where
# each landed within its page. glibc puts a 16-byte header before an mmapped chunk: 16 means its own
# mapping, anything else means an arena.
PROBE = """
import sys
from plugin import native_memory
if sys.argv[1] == "fix":
    print(native_memory.fix_mmap_threshold())
offsets = []
for _ in range(4):
    buffer = bytes(256 * 1024)
    offsets.append(id(buffer) % 4096)
    del buffer
print(offsets)
"""


def probe(mode: str) -> list[str]:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* tunables from the caller
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True, cwd=REPO
    )
    return result.stdout.splitlines()


def test_fixed_threshold_keeps_big_buffers_out_of_the_arenas() -> None:
    baseline = probe("none")
    if baseline == ["[16, 16, 16, 16]"] or not baseline[0].startswith("[16,"):
        pytest.skip(f"not glibc's malloc with a dynamic mmap threshold: {baseline}")
    assert probe("fix") == ["True", "[16, 16, 16, 16]"]


def test_operator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from plugin import native_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert native_memory.fix_mmap_threshold() is False
