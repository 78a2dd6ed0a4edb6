"""A test run leaves no temporary files behind except a failed test's (pyproject's pytest settings)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_passing_tests_leave_no_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "test_writes.py").write_text(
        "def test_passes(tmp_path):\n    (tmp_path / 'big').write_bytes(b'x' * 1024)\n\n"
        "def test_fails(tmp_path):\n    (tmp_path / 'kept').write_text('post-mortem')\n    assert False\n"
    )
    base = tmp_path / "base"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            f"--basetemp={base}",
            str(tmp_path / "test_writes.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert "1 failed, 1 passed" in run.stdout, run.stdout
    assert not list(base.rglob("big")), "a passing test's files were kept"
    assert list(base.rglob("kept")), "a failed test's files should stay for the post-mortem"
