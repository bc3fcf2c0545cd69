"""The broker's internal API, called directly with the broker key (as an operator may):
bad query input is a 400, never a database error."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "query",
    [
        {"user_id": "u\x00"},
        {"provider_name": "fake\x00"},
        {"status": "bogus"},
        {"page": "x"},
        {"page": "0"},
    ],
)
def test_connection_list_rejects_bad_query_with_400(stack, fake_provider_row, query):
    response = stack.broker("GET", "/internal/v1/connections", params=query, headers={"X-Dromos-Workspace": "ws-a"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


def test_connection_list_with_clean_query_answers(stack, fake_provider_row):
    response = stack.broker(
        "GET",
        "/internal/v1/connections",
        params={"user_id": "u", "provider_name": "fake"},
        headers={"X-Dromos-Workspace": "ws-a"},
    )
    assert response.status_code == 200 and response.json()["count"] == 0
