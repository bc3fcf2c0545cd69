"""Connection tags (issue 16): small string labels an agent filters connections by.

One home for the rules, used by the gateway (the `?tag=key:value` filter) and the broker
(connect sessions): at most MAX_TAGS tags, keys of 1-64 characters from [A-Za-z0-9_.-]
starting with a letter or digit, values of at most 256 printable characters (no control
characters). Messages never echo a rejected value."""

from __future__ import annotations

import re
from typing import Any

MAX_TAGS = 20
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 256
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TagError(ValueError):
    """A tag breaks the rules; the message is safe to show."""


def validate_tag_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise TagError(
            f"tag keys are 1-{MAX_KEY_LENGTH} characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return key


def validate_tag_value(value: object) -> str:
    if not isinstance(value, str):
        raise TagError("tag values are strings")
    if len(value) > MAX_VALUE_LENGTH:
        raise TagError(f"tag values are at most {MAX_VALUE_LENGTH} characters")
    if _CONTROL.search(value):
        raise TagError("tag values must not contain control characters")
    return value


def validate_tags(tags: Any) -> dict[str, str]:
    """The tags as stored, or TagError."""
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise TagError("tags must be an object of string keys to string values")
    if len(tags) > MAX_TAGS:
        raise TagError(f"at most {MAX_TAGS} tags")
    return {validate_tag_key(key): validate_tag_value(value) for key, value in tags.items()}


def parse_tag_filter(raw: str) -> tuple[str, str]:
    """`key:value` (the value may itself contain ':') → (key, value), or TagError."""
    key, sep, value = raw.partition(":")
    if not sep:
        raise TagError("tag filters are written key:value")
    return validate_tag_key(key), validate_tag_value(value)
