"""The HTTP layer: Docker's remote NetworkDriver and IpamDriver protocols. Each route parses a typed request,
calls a service and answers; errors take one path (``_answer_error``)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from driver import DataplaneError
from kvstore import Compacted, Conflict, Exhausted, NotFound, StoreError, StoreUnavailable

from . import failpoints
from . import messages as m
from .agent_client import STATUS_PATH
from .errors import BadRequest, ConflictError, KernelError, PluginError, StoreDown, UnknownObject
from .journal import RequestJournal
from .metrics import Metrics
from .services.ipam import IpamService
from .services.network import NetworkService
from .timings import RequestTimings

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
MAX_ERROR_CHARS = 1024
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's escape of a UTF-16 surrogate


def _answer(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type=CONTENT_TYPE)


def _body(raw: bytes | None = None) -> dict[str, Any]:
    # Docker sends no Content-Type, and an empty body for argument-less calls
    raw = request.get_data(cache=True) if raw is None else raw
    if not raw.strip():
        return {}
    try:
        text = raw.decode()  # JSON between systems is UTF-8 (RFC 8259 8.1): no guessing UTF-16 from bytes
        data = json.loads(text)
    except ValueError:
        raise BadRequest("request body is not valid JSON in UTF-8") from None
    except RecursionError:  # json's C decoder recurses per nesting level: "[" * 1000 ends the stack
        raise BadRequest("request body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):
        try:  # a lone "\ud800" decodes to a str that no store, log or kernel call can encode
            json.dumps(data, ensure_ascii=False).encode()
        except (UnicodeEncodeError, RecursionError):
            raise BadRequest(
                "request body holds a string that is not valid Unicode (a lone surrogate)"
            ) from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _as_plugin_error(exc: Exception) -> PluginError:
    if isinstance(exc, PluginError):
        return exc
    if isinstance(exc, NotFound):
        return UnknownObject(str(exc))
    if isinstance(exc, Conflict | Exhausted):
        return ConflictError(str(exc))
    if isinstance(exc, StoreUnavailable | Compacted):
        return StoreDown(str(exc))
    if isinstance(exc, StoreError):
        return BadRequest(str(exc))
    if isinstance(exc, DataplaneError):
        return KernelError(f"kernel: {exc}")
    return PluginError(f"internal error: {type(exc).__name__}: {exc}")


def _http_error(exc: HTTPException) -> PluginError:
    """Routing's own refusals, as JSON errors like every other answer (werkzeug's are HTML pages)."""
    error = PluginError(
        f"pyoverlay does not implement {request.path}"  # 404: Docker takes it as "not implemented"
        if exc.code == 404
        else f"{request.method} {request.path}: plugin calls are POST"
        if exc.code == 405
        else f"{request.path}: {exc.name}"
    )
    error.status = exc.code or 400
    return error


def _answer_error(exc: Exception) -> Response:
    error = _http_error(exc) if isinstance(exc, HTTPException) else _as_plugin_error(exc)
    path = request.path
    g.outcome = type(error).__name__  # the request's outcome in plugin/metrics.py
    message = str(error) or type(error).__name__
    if len(message) > MAX_ERROR_CHARS:  # a message quoting a huge field: Docker shows it to the user
        message = f"{message[:MAX_ERROR_CHARS]}… ({len(message)} characters)"
    if error.status >= 500 and not isinstance(error, StoreDown):
        log.exception("%s failed", path)
    else:
        log.warning("%s refused: %s", path, message)
    if path.startswith("/IpamDriver."):
        # "Error" is the IPAM protocol's field; Docker's plugin client reads "Err" from any non-200 body
        return _answer({"Error": message, "Err": message}, error.status)
    return _answer({"Err": message}, error.status)


TIMINGS_PATH = "/pyoverlay.Timings"  # private: not a Docker plugin call, Docker never sends it


# Answered even while the host's identity is refused: fixed answers Docker needs to load the plugin.
IDENTITY_FREE = {
    "/Plugin.Activate",
    "/NetworkDriver.GetCapabilities",
    "/IpamDriver.GetCapabilities",
    "/IpamDriver.GetDefaultAddressSpaces",
    TIMINGS_PATH,
    STATUS_PATH,  # says why requests are refused, among the rest
}


def create_app(
    network: NetworkService,
    ipam: IpamService,
    timings: RequestTimings | None = None,
    check_identity: Callable[[], None] | None = None,
    journal: RequestJournal | None = None,
    private: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
    metrics: Metrics | None = None,
    status: Callable[[], dict[str, Any]] | None = None,
) -> Flask:
    """The Flask app for one agent; no global state. With a ``journal``, a request Docker resends empty
    after an agent crash is answered from the body the crashed agent kept (see plugin/journal.py).
    ``check_identity`` raises to refuse a request (Agent.check_identity: a cloned host id). ``status``
    answers GET STATUS_PATH (plugin/status.py's agent_status). ``private``: the agent's own calls
    (``/pyoverlay.*``, from the CLI), answered like Docker's but never journalled."""
    app = Flask("pyoverlay")
    # "//Plugin.Activate" would get a redirect, which is no answer to Docker
    app.url_map.merge_slashes = False
    app.register_error_handler(Exception, _answer_error)
    if metrics is not None:  # first: a request refused by the identity check below is timed too
        metrics.instrument(app)
    _log_requests(app)  # before the identity check too: a refused request gets its line
    if check_identity is not None:

        @app.before_request
        def refuse_while_identity_is_taken() -> None:
            if request.path not in IDENTITY_FREE:
                check_identity()

    timings = timings if timings is not None else RequestTimings()

    def route(path: str, call: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        def view() -> Response:
            start = time.perf_counter()
            entry = journal.begin(path, request.get_data(cache=True)) if journal else None
            try:
                g.request_key = entry.key if entry else None
                return _answer(call(_body(entry.body if entry else None)) or {})
            finally:  # refused requests count too: their time is Docker's wait as well
                if journal and entry:
                    journal.end(entry)
                timings.record(path, time.perf_counter() - start)

        # no automatic OPTIONS: its answer has no body, and Docker only ever POSTs
        app.add_url_rule(
            path, endpoint=path, view_func=view, methods=["POST"], provide_automatic_options=False
        )

    def timings_view() -> Response:
        # {"Reset": true} clears them after reading, so a benchmark can measure one phase
        summary = timings.summary()
        if _body().get("Reset"):
            timings.reset()
        return _answer({"Timings": summary})

    app.add_url_rule(
        TIMINGS_PATH,
        endpoint=TIMINGS_PATH,
        view_func=timings_view,
        methods=["POST"],
        provide_automatic_options=False,
    )

    for path, call in (private or {}).items():

        def private_view(call: Callable[[dict[str, Any]], dict[str, Any]] = call) -> Response:
            return _answer(call(_body()))

        app.add_url_rule(
            path, endpoint=path, view_func=private_view, methods=["POST"], provide_automatic_options=False
        )

    if status is not None:
        app.add_url_rule(
            STATUS_PATH,
            endpoint=STATUS_PATH,
            view_func=lambda: _answer(status()),
            methods=["GET", "POST"],
            provide_automatic_options=False,
        )

    route("/Plugin.Activate", lambda b: {"Implements": ["NetworkDriver", "IpamDriver"]})

    # NetworkDriver
    route("/NetworkDriver.GetCapabilities", lambda b: network.capabilities())
    route("/NetworkDriver.CreateNetwork", lambda b: network.create_network(m.CreateNetworkRequest.parse(b)))
    route(
        "/NetworkDriver.DeleteNetwork",
        lambda b: network.delete_network(m.NetworkRequest.parse(b).docker_network_id),
    )
    route(
        "/NetworkDriver.CreateEndpoint", lambda b: network.create_endpoint(m.CreateEndpointRequest.parse(b))
    )
    route("/NetworkDriver.DeleteEndpoint", lambda b: network.delete_endpoint(m.EndpointRequest.parse(b)))
    route("/NetworkDriver.EndpointOperInfo", lambda b: network.oper_info(m.EndpointRequest.parse(b)))
    route("/NetworkDriver.Join", lambda b: network.join(m.EndpointRequest.parse(b)))
    route("/NetworkDriver.Leave", lambda b: _leave(m.EndpointRequest.parse(b)))
    route("/NetworkDriver.DiscoverNew", lambda b: {})
    route("/NetworkDriver.DiscoverDelete", lambda b: {})
    # Port publishing comes from docker_gwbridge (Join gives no gateway), so nothing to program here.
    route("/NetworkDriver.ProgramExternalConnectivity", lambda b: _validated(m.EndpointRequest.parse(b)))
    route("/NetworkDriver.RevokeExternalConnectivity", lambda b: _validated(m.EndpointRequest.parse(b)))
    # Swarm-only calls: pyoverlay keeps its own cluster state, so there is nothing to allocate.
    route("/NetworkDriver.AllocateNetwork", lambda b: _validated(m.NetworkRequest.parse(b), {"Options": {}}))
    route("/NetworkDriver.FreeNetwork", lambda b: _validated(m.NetworkRequest.parse(b)))

    # IpamDriver
    route("/IpamDriver.GetCapabilities", lambda b: ipam.capabilities())
    route("/IpamDriver.GetDefaultAddressSpaces", lambda b: ipam.default_address_spaces())
    route("/IpamDriver.RequestPool", lambda b: ipam.request_pool(m.RequestPoolRequest.parse(b)))
    route("/IpamDriver.ReleasePool", lambda b: ipam.release_pool(m.PoolRequest.parse(b).pool_id))
    route(
        "/IpamDriver.RequestAddress",
        lambda b: ipam.request_address(m.RequestAddressRequest.parse(b), g.request_key),
    )
    route("/IpamDriver.ReleaseAddress", lambda b: ipam.release_address(m.ReleaseAddressRequest.parse(b)))
    return app


def _log_requests(app: Flask) -> None:
    """One debug line per request with its outcome and latency (after the error path named it); with
    LOG_FORMAT=json they are fields of their own: request, outcome, latency_ms."""

    @app.before_request
    def start_clock() -> None:
        g.log_started = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        if log.isEnabledFor(logging.DEBUG) and "log_started" in g:
            ms = (time.perf_counter() - g.log_started) * 1000
            outcome = g.get("outcome", "ok")
            fields = {"request": request.path.lstrip("/"), "outcome": outcome, "status": response.status_code}
            log.debug("%s %s (%d) in %.1f ms", request.path, outcome, response.status_code, ms,
                      extra={**fields, "latency_ms": round(ms, 3)})  # fmt: skip
        return response


def _leave(_request: m.EndpointRequest) -> dict[str, Any]:
    # Leave changes nothing: the veth goes with DeleteEndpoint
    failpoints.hit("Leave.before_answer")
    return {}


def _validated(_request: object, answer: dict[str, Any] | None = None) -> dict[str, Any]:
    """For calls with nothing to do: the request is still parsed, so garbage is refused."""
    return answer or {}
