"""The provider callback: the only public route of the broker."""

from __future__ import annotations

from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from broker_app.services.reconnect import callback_complete

PAGE_MESSAGES = {
    "missing_state": "This sign-in link is incomplete: the state parameter is missing.",
    "unknown_state": "This sign-in link is unknown, expired or was already used. "
    "Start the connection again from the app.",
    "state_already_used": "This sign-in was already completed. Start the connection again from the app if needed.",
}


@never_cache
@csrf_exempt  # GET only: a POST (or any other method) gets 405, not the CSRF failure page
@require_GET
def auth_callback(request):
    params = request.GET
    outcome = callback_complete(
        state=params.get("state"),
        code=params.get("code"),
        iss=params.get("iss"),
        error=params.get("error"),
        error_description=params.get("error_description"),
        callback_params=params,
    )
    if outcome.redirect_url:
        response = HttpResponseRedirect(outcome.redirect_url)
        response["Referrer-Policy"] = "no-referrer"
        return response
    error = outcome.page_error or "unknown_state"
    return render(
        request,
        "broker/callback_error.html",
        {"error": error, "message": PAGE_MESSAGES.get(error, "The sign-in could not be completed.")},
        status=400,
    )
