"""LOG_FORMAT: the JSON formatter and the setting."""

from __future__ import annotations

import json
import logging

import pytest

from plugin import logs
from plugin.settings import load


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("plugin.app", logging.DEBUG, __file__, 1, "%s took %.1f ms", ("/X", 1.25), None)
    rec.__dict__.update(extra)
    return rec


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    line = logs.JsonFormatter().format(record(request="X", latency_ms=1.25))
    entry = json.loads(line)
    assert "\n" not in line
    assert (
        entry["message"] == "/X took 1.2 ms" and entry["level"] == "debug" and entry["logger"] == "plugin.app"
    )
    assert entry["request"] == "X" and entry["latency_ms"] == 1.25 and entry["time"].endswith("+00:00")


def test_an_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_the_setting() -> None:
    assert load(env={}).log_format == "text"
    assert load(env={"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SystemExit, match="LOG_FORMAT must be text or json, got 'xml'"):
        load(env={"LOG_FORMAT": "xml"})
    assert logs.gunicorn_config("debug", "text") is None
    assert logs.gunicorn_config("debug", "json")["root"]["handlers"] == ["stderr"]
