#!/usr/bin/env bash
# Fill build/wheelhouse with binary wheels of pyoverlay's dependencies for the image's Python and
# platform (not the host's), plus pip and setuptools, so the image build needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${WHEELHOUSE:-build/wheelhouse}
python=${PYTHON:-python3}
py_version=${PYTHON_VERSION:-3.11}
arch=${WHEEL_ARCH:-$(uname -m)}
glibc_minor=${GLIBC_MINOR:-36}  # bookworm's glibc 2.36: accept wheels for it and every older manylinux
platforms=(--platform "manylinux2014_$arch")
for minor in $(seq 17 "$glibc_minor"); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done

mkdir -p "$out"
"$python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
    >"$out/requirements.txt"
download() {
    "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        "${platforms[@]}" --python-version "$py_version" --implementation cp \
        --dest "$out" -r "$out/requirements.txt" pip 'setuptools>=68' "$@"
}
# What the wheelhouse already satisfies needs no index (an offline host with a copied wheelhouse);
# `rm -r build/wheelhouse` to take newer releases.
download --no-index --find-links "$out" >/dev/null 2>&1 || download
echo "$(find "$out" -name '*.whl' | wc -l) wheels in $out" >&2

# The userspace WireGuard the image adds to its base (for kernels without the module), fetched here like the
# wheels so the image build needs no Debian mirror either. The base is bookworm: so must this host's apt be.
mkdir -p "$out/debs"
if ! compgen -G "$out/debs/wireguard-go_*.deb" >/dev/null; then
    (cd "$out/debs" && apt-get download -q "wireguard-go:$(dpkg --print-architecture)" 2>&1 >/dev/null | grep -v unsandboxed >&2) || true
    compgen -G "$out/debs/wireguard-go_*.deb" >/dev/null \
        || { echo "wheelhouse.sh: could not download wireguard-go (apt-get update first?)" >&2; exit 1; }
fi
