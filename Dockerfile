# pyoverlay agent image; also the root filesystem of the managed plugin (`make plugin`).
# Python dependencies come from build/wheelhouse (`make wheelhouse`): the build needs no PyPI.
# BASE must be a Debian bookworm image with python3 matching the wheelhouse's Python (3.11);
# offline hosts use `packaging/build-base.sh` (debootstrap) to make one.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
COPY build/wheelhouse /wheels
# pip runs from its wheel, so the base needs no pip and the venv gets none.
RUN python3 -m venv --without-pip /opt/pyoverlay \
 && set -- /wheels/pip-*.whl \
 && /opt/pyoverlay/bin/python "$1/pip" install --no-cache-dir --no-index --find-links /wheels \
        --disable-pip-version-check --no-warn-script-location -r /wheels/requirements.txt
# README.md*: the build works with or without a readme
COPY pyproject.toml README.md* /src/
COPY plugin /src/plugin
COPY driver /src/driver
COPY kvstore /src/kvstore
# Install the package, then import every module of the tree from the venv (a subpackage left out fails).
RUN set -- /wheels/pip-*.whl \
 && /opt/pyoverlay/bin/python "$1/pip" install --no-cache-dir --no-index --find-links /wheels \
        --disable-pip-version-check --no-warn-script-location /src \
 && cd /src && find plugin driver kvstore -name '*.py' ! -name __main__.py \
    | sed 's|/__init__\.py$||; s|\.py$||; s|/|.|g' \
    | (cd / && xargs /opt/pyoverlay/bin/python -c \
        'import importlib, sys; [importlib.import_module(name) for name in sys.argv[1:]]')
# wireguard-go (userspace WireGuard where the kernel has no module): Debian's package, from the wheelhouse.
RUN set -- /wheels/debs/wireguard-go_*.deb && dpkg-deb -x "$1" /opt/wireguard-go \
 && /opt/wireguard-go/usr/bin/wireguard-go --version >/dev/null

FROM ${BASE}
# iptables from the base's Debian release (bookworm: the nft backend, as the host's dockerd uses).
RUN if ! command -v iptables >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends iptables \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
 && mkdir -p /var/lib/pyoverlay /run/docker/plugins
COPY --from=build /opt/pyoverlay /opt/pyoverlay
COPY --from=build /opt/wireguard-go/usr/bin/wireguard-go /usr/bin/wireguard-go
ENV PATH=/opt/pyoverlay/bin:$PATH PYTHONUNBUFFERED=1
ENTRYPOINT ["pyoverlay", "serve"]
