"""The hosted connect page (issue 16): public, next to /auth/callback.

    GET  /connect/{token}            the providers the session offers (or its reconnect)
    POST /connect/{token}            provider=…            → its parameter form, or straight on
    POST /connect/{token}            step=connect, param_… → 303 to the provider's consent page

Plain HTML forms (no JavaScript), Django's CSRF protection, a strict Content-Security-Policy
(own stylesheet and images only; the one inline style block, the workspace's accent colour,
is allowed by its hash). The token is in the path, so no response of this view is logged by
django.request with its path (the access log writes the route template instead)."""

from __future__ import annotations

from functools import lru_cache

from django.contrib.staticfiles import finders
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from broker_app.branding import Brand, brand_for
from broker_app.middleware import client_ip
from broker_app.services.connect_sessions import (
    PageError,
    ProviderChoice,
    check_params,
    connect_session_start,
    session_choices,
    session_for_token,
)
from dromos.errors import ApiError

TEMPLATE = "broker/connect.html"
MAX_ECHO = 300  # a rejected value is put back in its field, cut to this length


@lru_cache(maxsize=256)
def _logo(path: str) -> str:
    return path if finders.find(path) else "connect/logos/default.svg"


# Every variable the template reads, so that none is ever missing: Django logs a missing
# variable (logger django.template, DEBUG) with the whole context, whose request names the
# token-bearing path.
_TEMPLATE_DEFAULTS = {
    "problem": None,
    "problem_inline": None,
    "chosen": None,
    "errors": {},
    "form_error": "",
    "rows": [],
    "choices": [],
    "reconnect": False,
}


def _answer(request, context: dict, *, status: int = 200, brand: Brand | None = None) -> HttpResponse:
    context.setdefault("brand", brand)
    for name, empty in _TEMPLATE_DEFAULTS.items():
        context.setdefault(name, empty)
    chosen = context.get("chosen")
    if chosen is not None:
        values, errors = context.get("values") or {}, context.get("errors") or {}
        context["rows"] = [
            {"field": field, "value": values.get(field.name, ""), "error": errors.get(field.name)}
            for field in chosen.params
        ]
    response = render(request, TEMPLATE, context, status=status)
    style = f" {brand.style_hash}" if brand else ""
    response["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'self'{style}; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
    )
    # same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on the form's
    # POST, which Django's CSRF check refuses; other sites (the provider) still get nothing.
    response["Referrer-Policy"] = "same-origin"
    response["X-Robots-Tag"] = "noindex"
    # django.request would log 4xx answers with the path, which holds the token.
    response._has_been_logged = True
    return response


def _problem(request, error: PageError, brand: Brand | None = None) -> HttpResponse:
    return _answer(request, {"problem": error}, status=error.status, brand=brand)


def _choices(session) -> list[ProviderChoice]:
    return [
        ProviderChoice(
            provider=c.provider, name=c.name, display_name=c.display_name, logo=_logo(c.logo), params=c.params
        )
        for c in session_choices(session)
    ]


@never_cache
@require_http_methods(["GET", "POST"])
def connect_page(request, token: str):
    try:
        session = session_for_token(token)
    except PageError as error:
        return _problem(request, error)
    brand = brand_for(session.workspace)
    choices = _choices(session)
    context = {"session": session, "choices": choices, "reconnect": bool(session.reconnect_id)}
    if not choices:
        return _problem(request, PageError("unavailable", "No service is available on this link."), brand)
    if request.method == "GET":
        if len(choices) == 1 and choices[0].params:
            return _answer(request, {**context, "chosen": choices[0], "values": {}, "errors": {}}, brand=brand)
        return _answer(request, context, brand=brand)

    by_name = {choice.name: choice for choice in choices}
    chosen = by_name.get(request.POST.get("provider", ""))
    if chosen is None:
        return _answer(
            request, {**context, "problem_inline": PageError("provider_not_allowed")}, status=400, brand=brand
        )
    submitted = {field.name: request.POST.get(f"param_{field.name}", "").strip(" ") for field in chosen.params}
    if chosen.params and request.POST.get("step") != "connect":
        return _answer(request, {**context, "chosen": chosen, "values": {}, "errors": {}}, brand=brand)
    params, errors = check_params(chosen, submitted)
    if errors:
        values = {name: value[:MAX_ECHO] for name, value in submitted.items()}
        return _answer(
            request, {**context, "chosen": chosen, "values": values, "errors": errors}, status=400, brand=brand
        )
    try:
        auth_url = connect_session_start(token=token, provider_name=chosen.name, params=params, ip=client_ip(request))
    except PageError as error:
        if error.code == "provider_not_allowed":
            return _answer(request, {**context, "problem_inline": error}, status=400, brand=brand)
        return _problem(request, error, brand)
    except ApiError as error:  # the provider's own checks (parameters, configuration)
        values = {name: value[:MAX_ECHO] for name, value in submitted.items()}
        message = "This service could not be reached with these details. Check them and try again."
        if error.status_code >= 500:
            message = "This service is not reachable right now. Try again in a moment."
        return _answer(
            request,
            {**context, "chosen": chosen, "values": values, "errors": {}, "form_error": message},
            status=400 if error.status_code < 500 else 503,
            brand=brand,
        )
    response = HttpResponseRedirect(auth_url, status=303)
    response["Referrer-Policy"] = "no-referrer"
    return response


def csrf_failure(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: the connect page answers with its own page (and no log line with
    the token-bearing path); everything else gets Django's."""
    if request.path_info.startswith("/connect/"):
        problem = PageError(
            "csrf", "This form expired or was sent from another site. Open the link from the app again and retry."
        )
        problem.status = 403
        return _problem(request, problem)
    return django_csrf_failure(request, reason=reason)
