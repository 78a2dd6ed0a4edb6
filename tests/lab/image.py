"""The lab's test image: a busybox-static rootfs plus iperf3, as a tarball for ``docker import``.

There is no registry on the lab machines, so the image is built from host binaries and imported into
each host's daemon.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

IMAGE_TAG = "pyolab-test:latest"
IMPORT_CHANGES = ('CMD ["sh"]', "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin")
BUSYBOX = "/bin/busybox"
IPERF3 = "/usr/bin/iperf3"
# Bumped when the content changes, so a cached tarball from an older layout is not reused.
_LAYOUT_VERSION = "1"

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def build_image_tar(cache_dir: Path, *, with_iperf3: bool = True) -> Path:
    """Write the test image tarball under ``cache_dir`` (reused if already built) and return its path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"pyolab-image-v{_LAYOUT_VERSION}{'' if with_iperf3 else '-noiperf'}.tar"
    if target.exists():
        return target
    if not os.access(BUSYBOX, os.X_OK):
        raise RuntimeError(f"{BUSYBOX} missing: install busybox-static")
    tmp = target.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name in (
            "bin",
            "sbin",
            "usr",
            "usr/bin",
            "usr/sbin",
            "etc",
            "root",
            "var",
            "run",
            "proc",
            "sys",
            "dev",
        ):
            _add_dir(tar, name)
        _add_dir(tar, "tmp", mode=0o1777)
        _add_file(tar, "etc/passwd", _PASSWD.encode())
        _add_file(tar, "etc/group", _GROUP.encode())
        _add_file(tar, "bin/busybox", Path(BUSYBOX).read_bytes(), mode=0o755)
        for applet in _busybox_applets():
            if applet != "bin/busybox":
                _add_symlink(tar, applet, "/bin/busybox")
        if with_iperf3:
            _add_iperf3(tar)
    tmp.rename(target)  # atomic: a concurrent builder never sees a half-written tarball
    return target


def _busybox_applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    return sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})


def _add_iperf3(tar: tarfile.TarFile) -> None:
    """Copy iperf3 with every shared library ldd names (and the loader) at the paths ldd prints."""
    if not os.access(IPERF3, os.X_OK):
        raise RuntimeError(f"{IPERF3} missing: install iperf3 (or build the image with with_iperf3=False)")
    ldd = subprocess.run(["ldd", IPERF3], check=True, capture_output=True, text=True).stdout
    libs: set[str] = set()
    for line in ldd.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.add(match.group(1))
    seen_dirs: set[str] = set()
    for path in [IPERF3, *sorted(libs)]:
        rel = path.lstrip("/")
        parent = os.path.dirname(rel)
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen_dirs and d not in ("usr", "usr/bin"):
                seen_dirs.add(d)
                _add_dir(tar, d)
        # Dereference: the loader under /lib64 is a symlink on the host; the image needs the bytes.
        _add_file(tar, rel, Path(os.path.realpath(path)).read_bytes(), mode=0o755)


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0  # reproducible bytes for identical inputs
    return info


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    tar.addfile(_info(name, tarfile.DIRTYPE, mode))


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = _info(name, tarfile.REGTYPE, mode)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = _info(name, tarfile.SYMTYPE, 0o777)
    info.linkname = target
    tar.addfile(info)


def iperf3_available() -> bool:
    """Whether the host has the iperf3 binary the image copies."""
    return shutil.which("iperf3") is not None or os.access(IPERF3, os.X_OK)
