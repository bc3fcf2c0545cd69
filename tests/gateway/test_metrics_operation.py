"""The broker-call series' operation label (gateway_app.metrics.operation_of): every
`/connections/<id>` segment templated, as the regex it replaced (issue 20) did."""

from __future__ import annotations

import random
import re

import pytest

from gateway_app.metrics import operation_of

_REFERENCE = re.compile(r"(/connections/)[^/]+")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/internal/v1/connections/c_abc/token", "GET /internal/v1/connections/{id}/token"),
        ("/internal/v1/connections/c_abc/token?auto_refresh=true", "GET /internal/v1/connections/{id}/token"),
        ("/internal/v1/connections/c_abc", "GET /internal/v1/connections/{id}"),
        ("/internal/v1/connections/", "GET /internal/v1/connections/"),
        ("/internal/v1/connections", "GET /internal/v1/connections"),
        ("/internal/v1/connections//token", "GET /internal/v1/connections//token"),
        ("/a/connections/x/connections/y/z", "GET /a/connections/{id}/connections/{id}/z"),
        ("/internal/v1/webhooks/w_1", "GET /internal/v1/webhooks/w_1"),
    ],
)
def test_operation_templates_connection_ids(path, expected):
    assert operation_of("GET", path) == expected


def test_operation_matches_the_regex_it_replaced_on_random_paths():
    rng = random.Random(20)
    pieces = ["/", "connections", "/connections/", "x", "c_1", "?", "token", "//", "s/", "?q=/connections/a"]
    for _ in range(20000):
        path = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 9)))
        assert operation_of("POST", path) == "POST " + _REFERENCE.sub(r"\1{id}", path.split("?", 1)[0]), path
