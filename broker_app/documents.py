"""The broker's persistent store for OIDC discovery documents and JWKS (oauth.oidc's
DocumentStore): one row per URL, shared by every broker process and worker."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker_app.models import CachedDocument


class DatabaseDocumentStore:
    def load(self, url: str) -> tuple[dict[str, Any], datetime] | None:
        row = CachedDocument.objects.filter(url=url).only("body", "expires_at").first()
        return (row.body, row.expires_at) if row is not None else None

    def save(self, url: str, body: dict[str, Any], *, fetched_at: datetime, expires_at: datetime) -> None:
        CachedDocument.objects.update_or_create(
            url=url, defaults={"body": body, "fetched_at": fetched_at, "expires_at": expires_at}
        )
