"""The audit trail: every state change and every token read, never a token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker_app.models import AuditEvent


@dataclass(frozen=True)
class Actor:
    """Who is acting: `apikey:<prefix>`, `admin:<username>`, `broker-api`, `system`."""

    name: str
    workspace: str = ""
    ip: str | None = None


SYSTEM = Actor("system")


def audit_record(*, connection_id: str, workspace: str, actor: Actor, action: str,
                 detail: dict[str, Any] | None = None) -> None:
    AuditEvent.objects.create(
        connection_id=connection_id,
        workspace=workspace,
        actor=actor.name[:128],
        action=action,
        ip=actor.ip,
        detail=detail or {},
    )
