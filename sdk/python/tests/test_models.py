from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest

from conftest import ACCESS_TOKEN, ID_TOKEN, connection_json, provider_json, token_json
from dromos_sdk import (
    APIError,
    Connection,
    ConnectionFailedError,
    ConnectionNotActiveError,
    ConnectionPage,
    ConnectionRequest,
    ConnectionStatus,
    ParamFormat,
    Provider,
    Token,
    WaitTimeoutError,
)
from dromos_sdk.models import parse_timestamp


class TestParseTimestamp:
    def test_z_suffix_is_aware_utc(self) -> None:
        parsed = parse_timestamp("2026-11-26T21:00:00Z")
        assert parsed == datetime(2026, 11, 26, 21, 0, tzinfo=UTC)
        assert parsed is not None and parsed.utcoffset() == timedelta(0)

    def test_fractional_seconds_and_offset(self) -> None:
        parsed = parse_timestamp("2026-11-26T22:00:00.123456+01:00")
        assert parsed == datetime(2026, 11, 26, 21, 0, 0, 123456, tzinfo=UTC)
        assert parsed is not None and parsed.tzinfo == timezone(timedelta(hours=1))

    def test_null_stays_none(self) -> None:
        assert parse_timestamp(None) is None

    def test_naive_is_taken_as_utc(self) -> None:
        assert parse_timestamp("2026-11-26T21:00:00") == datetime(2026, 11, 26, 21, tzinfo=UTC)

    def test_rejects_non_strings(self) -> None:
        with pytest.raises(TypeError):
            parse_timestamp(1764190800)


class TestConnection:
    def test_full_object(self) -> None:
        conn = Connection.from_dict(connection_json(metadata={"instance_url": "https://x"}))
        assert conn.connection_id == "c_abc123"
        assert conn.status == "active"
        assert conn.status == ConnectionStatus.ACTIVE
        assert conn.is_active
        assert conn.scopes == ("openid", "email")
        assert conn.granted_scopes == ("openid", "email")
        assert conn.account == {"sub": "1234", "email": "ada@example.com"}
        assert conn.metadata == {"instance_url": "https://x"}
        assert conn.expires_at == datetime(2026, 11, 26, 21, tzinfo=UTC)
        assert conn.created_at is not None and conn.created_at.tzinfo is not None
        assert conn.last_refreshed_at is None

    def test_null_timestamps_and_error(self) -> None:
        conn = Connection.from_dict(
            connection_json(
                status="failed",
                error="access_denied",
                error_description="The user said no",
                expires_at=None,
                activated_at=None,
                last_refreshed_at=None,
                account={},
            )
        )
        assert not conn.is_active
        assert conn.expires_at is None and conn.activated_at is None
        assert conn.error == "access_denied"
        assert conn.error_description == "The user said no"
        assert conn.account == {}

    def test_minimal_and_unknown_fields(self) -> None:
        conn = Connection.from_dict({"connection_id": "c_1", "status": "pending", "new_field": 1})
        assert conn == Connection(connection_id="c_1", status="pending")

    def test_frozen(self) -> None:
        conn = Connection.from_dict(connection_json())
        with pytest.raises(dataclasses.FrozenInstanceError):
            conn.status = "revoked"  # type: ignore[misc]


class TestToken:
    def test_parse(self) -> None:
        token = Token.from_dict(token_json())
        assert token.access_token == ACCESS_TOKEN
        assert token.id_token == ID_TOKEN
        assert token.token_type == "Bearer"
        assert token.expires_at == datetime(2026, 11, 26, 21, tzinfo=UTC)
        assert token.scopes == ("openid", "email")
        assert token.provider_name == "google"
        assert token.connection_id == "c_abc123"

    def test_repr_and_str_never_show_secrets(self) -> None:
        token = Token.from_dict(token_json())
        for text in (repr(token), str(token), f"{token}", f"{token!r}", repr([token])):
            assert ACCESS_TOKEN not in text
            assert ID_TOKEN not in text
            assert "c_abc123" in text  # still useful in a log line
        assert "access_token" not in repr(token)

    def test_warnings_are_read_and_default_to_none(self) -> None:
        assert Token.from_dict(token_json()).warnings == ()
        shorter = Token.from_dict(token_json(warnings=["min_ttl_not_met"]))
        assert shorter.warnings == ("min_ttl_not_met",)

    def test_id_token_absent_and_null_expiry(self) -> None:
        data = token_json(expires_at=None)
        del data["id_token"]
        token = Token.from_dict(data)
        assert token.id_token is None
        assert token.expires_at is None
        assert token.expires_in() is None

    def test_authorization_header(self) -> None:
        assert Token.from_dict(token_json()).authorization == f"Bearer {ACCESS_TOKEN}"
        lower = Token.from_dict(token_json(token_type="bearer"))
        assert lower.authorization == f"Bearer {ACCESS_TOKEN}"

    def test_expires_in(self) -> None:
        token = Token.from_dict(token_json())
        now = datetime(2026, 11, 26, 20, 59, tzinfo=UTC)
        assert token.expires_in(now) == 60.0

    def test_frozen(self) -> None:
        token = Token.from_dict(token_json())
        with pytest.raises(dataclasses.FrozenInstanceError):
            token.access_token = "x"  # type: ignore[misc]


def test_connection_request_reads_auth_url() -> None:
    req = ConnectionRequest.from_dict(
        {
            "authUrl": "https://accounts.example/authorize?state=s1",
            "state": "s1",
            "scopes": ["openid"],
            "provider_id": "p_1",
            "connection_id": "c_new",
        }
    )
    assert req == ConnectionRequest(
        auth_url="https://accounts.example/authorize?state=s1",
        state="s1",
        scopes=("openid",),
        provider_id="p_1",
        connection_id="c_new",
    )


def test_provider() -> None:
    provider = Provider.from_dict(provider_json(params=["tenant"], docs_url=None))
    assert provider.name == "google"
    assert provider.display_name == "Google"
    assert provider.default_scopes == ("openid", "email")
    assert provider.supports_refresh and provider.supports_pkce
    assert provider.docs_url is None
    assert provider.params == ("tenant",)


def test_provider_metadata() -> None:
    provider = Provider.from_dict(
        provider_json(
            template="microsoft",
            oidc=True,
            supports_revocation=None,
            refresh_token_rotation=True,
            refresh_token_lifetime_days=90,
            params=["tenant"],
            param_formats={
                "tenant": {"pattern": "^[a-z]+$", "example": "common", "required": True}
            },
        )
    )
    assert provider.template == "microsoft" and provider.oidc
    assert provider.supports_revocation is None
    assert provider.refresh_token_rotation and provider.refresh_token_lifetime_days == 90
    assert provider.param_formats == {
        "tenant": ParamFormat(pattern="^[a-z]+$", example="common", required=True)
    }
    with pytest.raises(TypeError):
        Provider.from_dict(provider_json(refresh_token_lifetime_days="90"))
    with pytest.raises(TypeError):
        Provider.from_dict(provider_json(supports_revocation="yes"))


def test_connection_page() -> None:
    page = ConnectionPage.from_dict(
        {
            "count": 3,
            "next": "https://gw/v1/connections?page=2",
            "previous": None,
            "results": [connection_json(), connection_json(connection_id="c_2")],
        }
    )
    assert page.count == 3
    assert page.next == "https://gw/v1/connections?page=2"
    assert page.previous is None
    assert [c.connection_id for c in page.results] == ["c_abc123", "c_2"]


def test_bad_list_field_is_rejected() -> None:
    with pytest.raises(TypeError):
        Connection.from_dict(connection_json(scopes="openid email"))


def test_errors_pickle() -> None:
    err = ConnectionNotActiveError(
        409,
        "connection_not_active",
        "revoked",
        "revoked",
        body={"reconnect_required": True},
    )
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own object
    assert isinstance(copy, ConnectionNotActiveError)
    assert (copy.status_code, copy.status, copy.reconnect_required) == (409, "revoked", True)
    assert str(copy) == str(err)
    conn = Connection(connection_id="c_1", status="failed", error="access_denied")
    failed = pickle.loads(pickle.dumps(ConnectionFailedError(conn)))  # noqa: S301
    assert failed.connection == conn and failed.error == "access_denied"
    timeout = pickle.loads(pickle.dumps(WaitTimeoutError("c_1", 5, "pending")))  # noqa: S301
    assert isinstance(timeout, WaitTimeoutError) and isinstance(timeout, TimeoutError)
    assert timeout.last_status == "pending"
    assert isinstance(APIError(500, "x", "y"), Exception)
