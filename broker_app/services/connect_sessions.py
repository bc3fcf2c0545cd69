"""Connect sessions and the hosted connect page (issue 16).

An agent creates a session (who connects, which providers, which scopes, where the browser
returns, the tags the connection will carry, how long the link lives) and gets a
`connect_url` holding a random token. The token is the only credential the end user's
browser holds: it is stored as its digest, never logged (the request log writes the route,
not the path), and spent by the first POST that starts a consent flow — the page itself can
be opened (and re-opened, and prefetched by a link preview) until then. Starting is one
transaction with the session row locked, so two browsers racing on one link produce one
connection; the loser gets the "already used" page.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from broker_app import crypto
from broker_app.audit import Actor, audit_record
from broker_app.models import Connection, ConnectSession, Provider
from broker_app.presenters import connection_as_dict
from broker_app.providers.registry import described
from broker_app.providers.spec import (
    MAX_PARAM_LENGTH,
    ProviderConfigError,
    param_specs,
    template,
    validate_params,
)
from broker_app.return_urls import ReturnUrlError, validate_return_url
from broker_app.selectors import connection_get, provider_get_by_name, provider_list
from broker_app.services.connect import connection_start
from broker_app.services.reconnect import connection_reconnect, reconnect_prepare
from dromos import wire
from dromos.errors import ConnectionNotActive, InvalidRequest, NotFound
from dromos.tags import TagError, validate_tags

logger = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = wire.SESSION_EXPIRES_DEFAULT
MAX_EXPIRES_IN = wire.SESSION_EXPIRES_MAX
MIN_EXPIRES_IN = wire.SESSION_EXPIRES_MIN
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,128}\Z")


def connect_url(token: str) -> str:
    return f"{settings.BASE_URL}/connect/{token}"


@dataclass(frozen=True)
class CreatedSession:
    session: ConnectSession
    connect_url: str


def connect_session_create(
    *,
    workspace: str,
    user_id: str | None,
    allowed_providers: list[str] | None,
    scopes: dict[str, list[str]] | None,
    return_url: str,
    tags: dict[str, str] | None,
    expires_in: int | None,
    reconnect: str | None,
    actor: Actor,
) -> CreatedSession:
    """Validate everything a later page visit relies on, store the session, return its URL."""
    try:
        validate_return_url(return_url)
    except ReturnUrlError as exc:
        raise InvalidRequest(str(exc), details={"return_url": [str(exc)]}) from None
    try:
        clean_tags = validate_tags(tags)
    except TagError as exc:
        raise InvalidRequest(str(exc), details={"tags": [str(exc)]}) from None
    lifetime = DEFAULT_EXPIRES_IN if expires_in is None else expires_in
    if not MIN_EXPIRES_IN <= lifetime <= MAX_EXPIRES_IN:
        raise InvalidRequest(f"expires_in must be between {MIN_EXPIRES_IN} and {MAX_EXPIRES_IN} seconds")
    environment = actor.environment
    names = [
        provider_get_by_name(name, workspace=workspace, environment=environment).name
        for name in dict.fromkeys(allowed_providers or [])
    ]
    target = None
    if reconnect:
        target = connection_get(connection_id=reconnect, workspace=workspace, environment=environment)
        reconnect_prepare(connection=target, scopes=None, return_url=return_url)  # 409 for revoked/pending
        if names and names != [target.provider.name]:
            raise InvalidRequest("a reconnect session offers only the connection's own provider")
        if user_id and user_id != target.user_id:
            raise InvalidRequest("user_id differs from the connection's user_id")
        names, user_id = [target.provider.name], target.user_id
        if clean_tags:
            raise InvalidRequest("tags cannot be set on a reconnect session (the connection keeps its tags)")
    if not user_id:
        raise InvalidRequest("user_id is required", details={"user_id": ["required"]})
    offered = {
        name.casefold(): name
        for name in (names or [p.name for p in provider_list(workspace=workspace, environment=environment)])
    }
    clean_scopes: dict[str, list[str]] = {}
    for name, values in (scopes or {}).items():
        canonical = offered.get(str(name).casefold())
        if canonical is None:
            raise InvalidRequest(
                f"scopes names provider {str(name)[:64]!r}, which this session does not offer",
                details={"scopes": ["unknown provider"]},
            )
        clean_scopes[canonical] = list(dict.fromkeys(values))
    token = secrets.token_urlsafe(32)
    session = ConnectSession(
        workspace=workspace,
        environment=environment,
        user_id=user_id,
        token_digest=crypto.digest(token),
        allowed_providers=names,
        scopes=clean_scopes,
        return_url=return_url,
        tags=clean_tags,
        reconnect=target,
        expires_at=timezone.now() + timedelta(seconds=lifetime),
    )
    with transaction.atomic():
        session.save(force_insert=True)
        audit_record(
            connection_id=session.id,
            workspace=workspace,
            actor=actor,
            action="connect_session.created",
            detail={"providers": names, "reconnect": reconnect or None, "expires_in": lifetime},
        )
    logger.info("connect session created", extra={"connect_session": session.id})
    return CreatedSession(session=session, connect_url=connect_url(token))


def connect_session_get(*, session_id: str, workspace: str, environment: str) -> ConnectSession:
    session = ConnectSession.objects.filter(pk=session_id, workspace=workspace, environment=environment).first()
    if session is None:
        raise NotFound("connect session not found")
    return session


def session_status(session: ConnectSession, *, now: datetime | None = None) -> str:
    """pending, started, completed, failed, or expired (a pending link past its time)."""
    if session.status == ConnectSession.Status.PENDING and session.expires_at <= (now or timezone.now()):
        return "expired"
    return session.status


def session_connections(session: ConnectSession) -> list[Connection]:
    """The connections the session produced (or, for a reconnect, the one it reconnected)."""
    produced = list(Connection.objects.filter(connect_session=session).select_related("provider"))
    if session.reconnect_id and session.status == ConnectSession.Status.COMPLETED:
        produced += list(Connection.objects.filter(pk=session.reconnect_id).select_related("provider"))
    return produced


# -- the hosted page -------------------------------------------------------------------------------


class PageError(Exception):
    """Why the page cannot go on: a code (for tests and the template), a status, a message."""

    MESSAGES = {
        "unknown": (404, "This link is not valid. Check that it was copied completely, or ask the app for a new one."),
        "expired": (410, "This link has expired. Go back to the app and start connecting again."),
        "used": (410, "This link was already used. Go back to the app and start again if you still need to connect."),
        "provider_not_allowed": (400, "That service is not offered by this link. Pick one from the list."),
        "unavailable": (409, "This account can no longer be reconnected. Go back to the app."),
    }

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.status, default = self.MESSAGES.get(code, (400, "This request could not be completed."))
        self.message = message or default
        super().__init__(code)


def session_for_token(token: str, *, lock: bool = False) -> ConnectSession:
    """The usable session a token names, or PageError (unknown 404, expired or used 410)."""
    if not _TOKEN.match(token or ""):
        raise PageError("unknown")
    queryset = ConnectSession.objects.select_related("reconnect__provider")
    if lock:
        queryset = queryset.select_for_update(of=("self",))
    session = queryset.filter(token_digest=crypto.digest(token)).first()
    if session is None:
        raise PageError("unknown")
    if session.status != ConnectSession.Status.PENDING:
        raise PageError("used")
    if session.expires_at <= timezone.now():
        raise PageError("expired")
    return session


@dataclass(frozen=True)
class ParamField:
    name: str
    label: str
    example: str
    required: bool


@dataclass(frozen=True)
class ProviderChoice:
    provider: Provider
    name: str
    display_name: str
    logo: str  # static path
    params: tuple[ParamField, ...]


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def provider_choice(provider: Provider, *, with_params: bool = True) -> ProviderChoice:
    entry = template(provider.template)
    specs = param_specs(entry)
    fields = tuple(
        ParamField(name=name, label=_label(name), example=specs[name].example, required=specs[name].default is None)
        for name in described(provider).open_params()
        if with_params
    )
    return ProviderChoice(
        provider=provider,
        name=provider.name,
        display_name=provider.display_name or entry.get("display_name", provider.name),
        logo=f"connect/logos/{provider.template}.svg",
        params=fields,
    )


def session_choices(session: ConnectSession) -> list[ProviderChoice]:
    """What the page offers: the allowed providers that are enabled, in the session's order."""
    if session.reconnect_id:
        return [provider_choice(session.reconnect.provider, with_params=False)]
    enabled = {p.name: p for p in provider_list(workspace=session.workspace, environment=session.environment)}
    names = session.allowed_providers or sorted(enabled)
    return [provider_choice(enabled[name]) for name in names if name in enabled]


def check_params(choice: ProviderChoice, submitted: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Per-field validation with the API's rules: (clean values, field errors). Messages
    never echo the value."""
    entry = template(choice.provider.template)
    clean: dict[str, str] = {}
    errors: dict[str, str] = {}
    for field in choice.params:
        value = submitted.get(field.name, "")
        if value == "":
            if field.required:
                errors[field.name] = f"Enter your {field.label.lower()}."
            continue
        if len(value) > MAX_PARAM_LENGTH:
            errors[field.name] = f"This is too long: at most {MAX_PARAM_LENGTH} characters."
            continue
        try:
            clean.update(validate_params(entry, {field.name: value}))
        except ProviderConfigError:
            example = f" It looks like {field.example}." if field.example else ""
            errors[field.name] = f"This is not a valid {field.label.lower()}.{example}"
    return clean, errors


def connect_session_start(*, token: str, provider_name: str, params: dict[str, str], ip: str | None) -> str:
    """Spend the token and start the consent flow (a new connection, or the session's
    reconnect); returns the provider's authorization URL. One transaction: a refusal (bad
    parameter, provider not offered) leaves the token usable and writes nothing."""
    with transaction.atomic():
        session = session_for_token(token, lock=True)
        actor = Actor(
            name=f"connect-session:{session.id}"[:128],
            workspace=session.workspace,
            ip=ip,
            environment=session.environment,
        )
        choices = {choice.name: choice for choice in session_choices(session)}
        choice = choices.get(provider_name)
        if choice is None:
            raise PageError("provider_not_allowed")
        scopes = session.scopes.get(choice.name)
        if session.reconnect_id:
            try:
                result = connection_reconnect(
                    connection_id=session.reconnect_id,
                    workspace=session.workspace,
                    scopes=scopes,
                    return_url=session.return_url,
                    actor=actor,
                    connect_session=session,
                )
            except (InvalidRequest, NotFound, ConnectionNotActive):
                raise PageError("unavailable") from None
            auth_url = result.auth_url
        else:
            started = connection_start(
                workspace=session.workspace,
                user_id=session.user_id,
                provider_name=choice.name,
                scopes=scopes,
                return_url=session.return_url,
                params=params,
                actor=actor,
                tags=session.tags,
                connect_session_id=session.id,
            )
            auth_url = started.auth_url
        session.status = ConnectSession.Status.STARTED
        session.used_at = timezone.now()
        session.save(update_fields=["status", "used_at"])
    logger.info("connect session started", extra={"connect_session": session.id, "provider": choice.name})
    return auth_url


def connect_session_as_dict(session: ConnectSession) -> dict[str, Any]:
    return {
        "session_id": session.id,
        "status": session_status(session),
        "user_id": session.user_id,
        "allowed_providers": session.allowed_providers,
        "scopes": session.scopes,
        "return_url": session.return_url,
        "tags": session.tags,
        "reconnect": session.reconnect_id,
        "error": session.error or None,
        "expires_at": session.expires_at,
        "created_at": session.created_at,
        "used_at": session.used_at,
        "completed_at": session.completed_at,
        "connections": [connection_as_dict(c) for c in session_connections(session)],
    }
