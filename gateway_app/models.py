"""Agent API keys. Shown once, stored as a SHA-256 digest (the key has 256 bits of
randomness, so a slow hash adds nothing) next to a short visible prefix used for lookup."""

from __future__ import annotations

from django.db import models

ALL_SCOPES = ("connections:write", "connections:read", "connections:delete", "tokens:read", "tokens:refresh")


class ApiKey(models.Model):
    workspace = models.CharField(max_length=128, db_index=True)
    name = models.CharField(max_length=128)
    prefix = models.CharField(max_length=16, unique=True)
    key_digest = models.CharField(max_length=64)
    scopes = models.JSONField(default=list, help_text="Empty means every scope")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["workspace", "name"]

    def __str__(self) -> str:
        return f"{self.workspace}/{self.name} ({self.prefix})"
