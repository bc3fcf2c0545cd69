"""Page bounds of `GET /v1/connections` (gateway) and `/internal/v1/connections` (broker).

One home for both apps: a page number past MAX_PAGE (a 30-digit one overflowed the
database's OFFSET: a 500 at the broker, a 502 at the gateway) is a 400 `invalid_request`."""

from __future__ import annotations

from dromos.errors import InvalidRequest

MAX_PAGE = 100_000
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50


def page_params(query) -> tuple[int, int]:
    """(page, page_size) from query parameters, each checked against its bounds."""
    values = []
    for name, default, upper in (("page", 1, MAX_PAGE), ("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)):
        raw = query.get(name) or str(default)
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 7 and 1 <= int(raw) <= upper):
            raise InvalidRequest(f"{name} must be an integer from 1 to {upper}")
        values.append(int(raw))
    return values[0], values[1]
