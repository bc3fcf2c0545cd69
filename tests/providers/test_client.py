"""The protocol client's provider-independent rules: token types, lifetimes, body decoding
and error classification, over real HTTP against the replay server."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from broker_app.models import Connection
from broker_app.oauth import client
from broker_app.oauth.errors import PermanentOAuthError, TransientOAuthError
from broker_app.oauth.tokens import MAX_LIFETIME_SECONDS, normalise_token_type, parse_expires_in
from broker_app.providers.registry import resolve
from broker_app.services.lifecycle import store_tokens
from tests.providers.contract import REDIRECT_URI, VERIFIER, at_replay, provider_row


@pytest.fixture
def spotify(replay):
    spec, hooks = resolve(provider_row("spotify", {}))
    return at_replay(spec, replay), hooks


def exchange(spotify, replay, status, body, **kwargs):
    spec, hooks = spotify
    replay.answer("POST", "/api/token", status, body, **kwargs)
    return client.exchange_code(spec, hooks, code="c", redirect_uri=REDIRECT_URI, code_verifier=VERIFIER)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bearer", "Bearer"),
        ("Bearer", "Bearer"),
        ("BEARER", "Bearer"),
        (None, "Bearer"),
        ("", "Bearer"),
        ("user", "Bearer"),
        ("bot", "Bearer"),
        ("dpop", "DPoP"),
        ("DPoP", "DPoP"),
        ("mac", "MAC"),
    ],
)
def test_token_type_is_normalised(spotify, replay, value, expected):
    body = {"access_token": "a"} if value is None else {"access_token": "a", "token_type": value}
    assert exchange(spotify, replay, 200, body).token_type == expected


def test_unknown_token_types_are_kept_only_by_the_low_level_normaliser():
    assert normalise_token_type("bearer") == "Bearer"
    assert normalise_token_type("N_A" * 20) == ("N_A" * 20)[:32]


@pytest.mark.parametrize(
    "value, expected",
    [
        (3600, 3600),
        ("3600", 3600),
        (3599.9, 3599),
        (None, None),
        ("", None),
        (0, None),
        (-5, None),
        ("soon", None),
        (True, None),
        ([3600], None),
        (10**30, MAX_LIFETIME_SECONDS),
        ("inf", None),
        ("nan", None),
    ],
)
def test_expires_in_is_parsed_defensively(value, expected):
    assert parse_expires_in(value) == expected


def test_a_nonsensical_lifetime_cannot_overflow_the_stored_expiry(spotify, replay):
    tokens = exchange(
        spotify,
        replay,
        200,
        {"access_token": "a", "expires_in": 10**30, "refresh_token": "r", "refresh_token_expires_in": "1e40"},
    )
    connection = Connection(id="c_overflow")
    store_tokens(connection, tokens, keep_refresh_token=False)
    assert connection.expires_at > timezone.now() + timedelta(days=365 * 49)
    assert connection.refresh_expires_at > timezone.now() + timedelta(days=365 * 49)


@pytest.mark.parametrize(
    "body, content_type",
    [
        ('{"access_token": "a", "expires_in": 60}', "text/plain"),
        ('{"access_token": "a", "expires_in": 60}', "text/javascript; charset=utf-8"),
        ("access_token=a&expires_in=60", "text/plain; charset=utf-8"),
        ("access_token=a&expires_in=60", "application/x-www-form-urlencoded"),
    ],
)
def test_mislabelled_bodies_are_still_read(spotify, replay, body, content_type):
    tokens = exchange(spotify, replay, 200, body, content_type=content_type)
    assert tokens.access_token == "a" and tokens.expires_in == 60


@pytest.mark.parametrize(
    "status, body, content_type",
    [
        (200, "<html>maintenance</html>", "text/html"),
        (200, "", "application/json"),
        (200, "[1, 2]", "application/json"),
        (200, {"token_type": "bearer"}, "application/json"),  # no access_token
    ],
)
def test_an_answer_that_is_not_a_token_is_transient_not_a_grant_failure(spotify, replay, status, body, content_type):
    with pytest.raises(TransientOAuthError):
        exchange(spotify, replay, status, body, content_type=content_type)


def test_an_html_error_page_is_a_permanent_http_error(spotify, replay):
    with pytest.raises(PermanentOAuthError) as caught:
        exchange(spotify, replay, 401, "<html>Unauthorized</html>", content_type="text/html")
    assert caught.value.error == "http_401"


def test_an_unreachable_provider_is_transient(spotify):
    spec, hooks = spotify
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    import dataclasses

    spec = dataclasses.replace(spec, token_url=f"http://127.0.0.1:{port}/api/token")
    with pytest.raises(TransientOAuthError) as caught:
        client.exchange_code(spec, hooks, code="c", redirect_uri=REDIRECT_URI, code_verifier=VERIFIER)
    assert caught.value.error == "connection_error"


def test_an_error_description_never_becomes_the_code(spotify, replay):
    with pytest.raises(PermanentOAuthError) as caught:
        exchange(spotify, replay, 400, {"error": "invalid grant; DROP TABLE", "error_description": "x"})
    assert caught.value.error == "provider_error"  # not a plain code: not echoed anywhere


def test_revocation_of_an_unsupported_token_type_is_not_an_error(replay):
    spec, _hooks = resolve(provider_row("discord", {}))
    spec = at_replay(spec, replay)
    replay.answer("POST", "/api/oauth2/token/revoke", 400, {"error": "unsupported_token_type"})
    assert client.revoke(spec, token="TOKEN", token_type_hint="refresh_token") is False
    replay.answer("POST", "/api/oauth2/token/revoke", 400, {"error": "invalid_client"})
    with pytest.raises(PermanentOAuthError):
        client.revoke(spec, token="TOKEN", token_type_hint="refresh_token")


def test_authorize_params_cannot_replace_what_binds_the_answer_to_the_connection():
    row = provider_row("google", {})
    row.authorize_params = {
        "state": "attacker",
        "redirect_uri": "https://evil.example.com/cb",
        "nonce": "n",
        "code_challenge": "x",
        "prompt": "select_account",
        "hd": "example.com",
    }
    spec, _hooks = resolve(row)
    url = client.authorize_url(
        spec,
        redirect_uri=REDIRECT_URI,
        scopes=["openid"],
        state="state-1",
        code_challenge=client.pkce_challenge(VERIFIER),
        nonce="nonce-1",
    )
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(url).query)
    assert query["state"] == ["state-1"] and query["redirect_uri"] == [REDIRECT_URI]
    assert query["nonce"] == ["nonce-1"] and query["code_challenge"] == [client.pkce_challenge(VERIFIER)]
    assert query["prompt"] == ["select_account"] and query["hd"] == ["example.com"]  # operator's choice wins
    assert query["access_type"] == ["offline"]
