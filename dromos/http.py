"""Small HTTP helpers shared by both processes."""

from __future__ import annotations

from django.http import HttpResponse


def no_store(response: HttpResponse) -> HttpResponse:
    """Mark an answer that carries tokens, state or live status as never to be cached."""
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"  # HTTP/1.0 caches
    return response
