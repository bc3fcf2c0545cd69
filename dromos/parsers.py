"""Request bodies: the JSON parser both apps use, and a WSGI wrapper that lets Django read a
chunked body.

Python's `json` recurses once per nesting level, so a 10 kB body of 5,000 brackets raised
RecursionError (a 500). orjson refuses nesting past 1,024 levels with a ValueError, and no
API body nests anywhere near MAX_JSON_DEPTH, so anything deeper is answered 400
`invalid_request` before a serializer sees it.

Django reads `CONTENT_LENGTH` bytes of a body and nothing else, so a body sent with
`Transfer-Encoding: chunked` (no Content-Length) read as empty. Gunicorn de-chunks the
stream and says so with `wsgi.input_terminated` (the convention of mod_wsgi and Werkzeug);
`ChunkedBodyMiddleware` then reads at most DATA_UPLOAD_MAX_MEMORY_SIZE + 1 bytes and hands
Django the buffered body with its length, so the body is parsed as if it had carried a
Content-Length, and an oversized one still answers 413."""

from __future__ import annotations

import io

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

MAX_JSON_DEPTH = 32


def json_depth_exceeds(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` (parsed JSON) nests deeper than `limit` arrays/objects; iterative."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class JSONParser(BaseParser):
    """application/json, parsed by orjson, nesting bounded by MAX_JSON_DEPTH, size by
    DATA_UPLOAD_MAX_MEMORY_SIZE (413 past it, with or without a Content-Length)."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = b"" if stream is None else stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
        try:
            data = orjson.loads(raw)
        except ValueError:  # orjson.JSONDecodeError, nesting past 1,024 levels included
            raise ParseError("Request body is not valid JSON.") from None
        if json_depth_exceeds(data):
            raise ParseError(f"Request body nests deeper than {MAX_JSON_DEPTH} levels.")
        return data


class ChunkedBodyMiddleware:
    """WSGI wrapper: a de-chunked body without Content-Length becomes a buffered one with it."""

    def __init__(self, application) -> None:
        self.application = application

    def __call__(self, environ, start_response):
        if (
            environ.get("wsgi.input_terminated")
            and not environ.get("CONTENT_LENGTH")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
            # Views that stream the body themselves, with their own cap (the gateway's API
            # proxy): buffering here would cut a larger body short without telling them.
            and not environ.get("PATH_INFO", "").startswith(tuple(settings.CHUNKED_BODY_STREAMED_PATHS))
        ):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            body = _read_at_most(environ["wsgi.input"], limit + 1 if limit is not None else None)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)


def _read_at_most(stream, limit: int | None) -> bytes:
    chunks, size = [], 0
    while limit is None or size < limit:
        chunk = stream.read(65536 if limit is None else min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
