"""Input rules shared by the gateway's and the broker's APIs."""

from __future__ import annotations

import re

from rest_framework import serializers

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), printable ASCII without the
# space, '"' and '\'. The authorization request joins scopes with spaces, so a value holding
# a space would silently become two scopes.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+\Z")


def validate_scope_token(value: str) -> None:
    if not _SCOPE_TOKEN.match(value):
        if " " in value.strip():
            raise serializers.ValidationError(
                'each scope is one list item without spaces: send ["openid", "email"], not ["openid email"]'
            )
        raise serializers.ValidationError("a scope is printable ASCII without spaces, '\"' or '\\' (RFC 6749 §3.3)")
