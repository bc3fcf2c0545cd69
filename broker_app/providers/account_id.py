"""Who the account is at the provider: the catalog's `account_id_field` read from the
documents of one consent (for reconnect, which must not let a grant change owner)."""

from __future__ import annotations

from typing import Any

from broker_app.providers.hooks import dig


def account_id(
    field: str,
    *,
    claims: dict[str, Any] | None = None,
    token: dict[str, Any] | None = None,
    userinfo: dict[str, Any] | None = None,
    callback: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> str | None:
    """The account id as a string, or None when the field is "" or the document lacks it.
    `field` is "id_token.sub", "token.authed_user.id", "userinfo.id", "callback.realmId" or
    "param.shop" (spec.entry_problems checks the form)."""
    source, _, path = (field or "").partition(".")
    documents = {"id_token": claims, "token": token, "userinfo": userinfo, "callback": callback, "param": params}
    document = documents.get(source)
    if not path or not isinstance(document, dict):
        return None
    value = document.get(path) if source in ("callback", "param") else dig(document, path)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def userinfo_record(field: str, document: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a connection keeps of a userinfo answer for a "userinfo.PATH" field: the account
    id alone, at its path (`{"user": {"id": "42"}}` for "userinfo.user.id"), so that the next
    reconnect can compare it; None when the field reads no userinfo or the answer lacks the id."""
    source, _, path = (field or "").partition(".")
    if source != "userinfo" or not path:
        return None
    found = account_id(field, userinfo=document)
    if found is None:
        return None
    record: dict[str, Any] = {}
    node = record
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = found
    return record
