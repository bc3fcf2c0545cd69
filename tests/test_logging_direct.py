"""The access-log line written directly (dromos/logging.py: direct_handler, write_direct; used
by the token read's fast path, issue 20): the same JSON line logging would write through
settings.LOGGING's console handler, and logging itself whenever the configuration is any
other (a test's caplog, another handler, a filter, a level)."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from dromos.logging import JsonFormatter, RequestIdFilter, direct_handler, request_id_var, write_direct

FIELDS = {"method": "GET", "path": "/v1/token/c_1", "route": "/v1/token/<str:connection_id>", "status": 200}


@pytest.fixture
def tree():
    """dromos.request under a root with settings.LOGGING's console handler, on a private tree."""
    root = logging.RootLogger(logging.INFO)
    manager = logging.Manager(root)
    logger = manager.getLogger("dromos.request")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    return root, logger, handler, stream


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_direct_line_is_the_line_logging_writes(tree):
    root, logger, handler, stream = tree
    token = request_id_var.set("req-abcdef12")
    try:
        logger.info("%s %s %s", "GET", FIELDS["path"], 200, extra={**FIELDS, "duration_ms": 1.25})
        assert direct_handler(logger, logging.INFO) is handler
        write_direct(handler, logger.name, logging.INFO, f"GET {FIELDS['path']} 200", {**FIELDS, "duration_ms": 1.25})
    finally:
        request_id_var.reset(token)
    through_logging, direct = stream.getvalue().splitlines()
    assert re.sub(r'"ts": "[^"]+"', "", through_logging) == re.sub(r'"ts": "[^"]+"', "", direct)  # same bytes
    for line in _lines(stream):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert _lines(stream)[1] == {
        "ts": _lines(stream)[1]["ts"],
        "level": "INFO",
        "logger": "dromos.request",
        "msg": "GET /v1/token/c_1 200",
        "request_id": "req-abcdef12",
        **FIELDS,
        "duration_ms": 1.25,
    }


@pytest.mark.parametrize(
    "change",
    [
        "second_handler",  # e.g. pytest's caplog on the root
        "handler_on_logger",
        "logger_filter",
        "other_formatter",
        "other_filter",
        "handler_level",
        "logger_level",
        "disabled",
        "not_propagating",
        "file_handler",
    ],
)
def test_any_other_configuration_goes_through_logging(tree, tmp_path, change):
    root, logger, handler, stream = tree
    if change == "second_handler":
        root.addHandler(logging.StreamHandler(io.StringIO()))
    elif change == "handler_on_logger":
        logger.addHandler(logging.StreamHandler(io.StringIO()))
    elif change == "logger_filter":
        logger.addFilter(logging.Filter("dromos"))
    elif change == "other_formatter":
        handler.setFormatter(logging.Formatter())
    elif change == "other_filter":
        handler.addFilter(logging.Filter("dromos"))
    elif change == "handler_level":
        handler.setLevel(logging.WARNING)
    elif change == "logger_level":
        logger.setLevel(logging.WARNING)
    elif change == "disabled":
        logger.disabled = True
    elif change == "not_propagating":
        logger.propagate = False
    elif change == "file_handler":
        root.removeHandler(handler)
        root.addHandler(logging.FileHandler(tmp_path / "log"))
    assert direct_handler(logger, logging.INFO) is None


def test_the_settings_configuration_is_written_directly(settings):
    """The gateway's and broker's real configuration (settings.LOGGING) qualifies, so the fast
    path's access line skips logging's record machinery there."""
    import logging.config

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logging.config.dictConfig(settings.LOGGING)
        assert isinstance(direct_handler(logging.getLogger("dromos.request"), logging.INFO), logging.StreamHandler)
    finally:
        root.handlers[:], root.level = saved


def test_the_timestamp_is_right_across_seconds():
    """The second's text is formatted once per second and reused: each line still carries its
    own second and milliseconds."""
    import time

    from dromos.logging import _timestamp

    for created in (1_700_000_000.123, 1_700_000_000.999, 1_700_000_001.0, 1_700_000_000.5, 1_800_000_000.042):
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int((created % 1) * 1000):03d}Z"
        assert _timestamp(created, (created - int(created)) * 1000) == expected
