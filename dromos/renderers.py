"""orjson-backed DRF renderer (same output as the stock JSON renderer, less CPU per call) and
a content negotiation for the JSON-only hot path."""

from __future__ import annotations

import orjson
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer


class FastJSONRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """For views that answer JSON and nothing else: the first renderer, without parsing the
    Accept header (DRF's negotiation was a tenth of the broker's CPU for a token read, issue 7).
    A client that accepts only something else gets JSON rather than a 406."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
