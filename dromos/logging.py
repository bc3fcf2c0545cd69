"""Structured JSON logs. Every record carries the request id of the request it belongs to.

Log calls name connection ids, never token values: the formatter also redacts any
`extra` field whose name marks it as secret, as a second line of defence."""

from __future__ import annotations

import contextvars
import json
import logging
import time
from functools import lru_cache

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
_SECRET_MARKERS = ("token", "secret", "password", "verifier", "api_key", "apikey", "authorization", "cookie")
_SECRET_NAMES = {"code", "key", "state", "nonce"}
_PLAIN = (str, int, float, type(None))  # values that cannot be a request
_ENCODER = json.JSONEncoder(default=str)  # json.dumps(entry, default=str) builds one per call


@lru_cache(maxsize=4096)  # field names are few
def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(marker in lowered for marker in _SECRET_MARKERS)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class UrlQueryFilter(logging.Filter):
    """urllib3 writes each request line at DEBUG ('http://host:port "GET /path?query …" 200'):
    a query string may carry a credential (an API key sent as a query parameter by the
    proxy or a static credential's verification), so these lines never show one. Attached
    to the `urllib3.connectionpool` logger by settings.LOGGING."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5 and isinstance(args[4], str) and "?" in args[4]:
            record.args = (*args[:4], args[4].split("?", 1)[0] + "?<query not logged>", *args[5:])
        return True


_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second and its text (a tuple: replaced whole)


def _timestamp(created: float, msecs: float) -> str:
    second, text = _second[0]
    if second != int(created):  # strftime once a second per process, not once a line (issue 20)
        second = int(created)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = (second, text)
    return f"{text}.{int(msecs):03d}Z"


def _head(created: float, msecs: float, level: str, name: str, message: str, request_id: str) -> dict:
    """The fields every JSON line starts with (JsonFormatter and write_direct)."""
    return {"ts": _timestamp(created, msecs), "level": level, "logger": name, "msg": message, "request_id": request_id}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", request_id_var.get())
        entry = _head(record.created, record.msecs, record.levelname, record.name, record.getMessage(), request_id)
        for name, value in vars(record).items():
            if name in _STANDARD or name.startswith("_"):
                continue
            if _is_secret(name):
                value = "[redacted]"
            elif not isinstance(value, _PLAIN) and hasattr(value, "META") and hasattr(value, "path"):
                # django.request passes the request itself: its repr carries the query string,
                # and the OAuth callback's query carries the authorization code and state.
                value = f"{getattr(value, 'method', '')} {value.path}"
            entry[name] = value
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return _ENCODER.encode(entry)


def direct_handler(logger: logging.Logger, level: int) -> logging.StreamHandler | None:
    """The one handler a record of `logger` at `level` would reach, when writing its line
    directly gives exactly what logging would write (write_direct): no filter on the logger,
    no handler but one plain StreamHandler with a JsonFormatter and RequestIdFilters, reached
    by propagation to the root (settings.LOGGING's console). None otherwise (a test's caplog
    handler, another configuration): the record then goes through logging as usual."""
    if logger.filters or logger.disabled or not logger.isEnabledFor(level):
        return None
    node, found = logger, None
    while node is not None:
        for handler in node.handlers:
            if found is not None or level < handler.level:
                return None
            found = handler
        if not node.propagate:
            break
        node = node.parent
    if (
        type(found) is not logging.StreamHandler
        or type(found.formatter) is not JsonFormatter
        or not all(type(f) is RequestIdFilter for f in found.filters)
    ):
        return None
    return found


def write_direct(handler: logging.StreamHandler, name: str, level: int, message: str, fields: dict) -> None:
    """The line JsonFormatter makes for a record of logger `name` with `message` and `fields`
    as its extra (no secret names among them), written as StreamHandler.emit writes it,
    without the LogRecord (issue 20: the access log is a tenth of a token read's CPU)."""
    created = time.time()
    msecs = (created - int(created)) * 1000
    entry = _head(created, msecs, logging.getLevelName(level), name, message, request_id_var.get()) | fields
    line = _ENCODER.encode(entry) + handler.terminator
    with handler.lock:
        handler.stream.write(line)
        handler.flush()
