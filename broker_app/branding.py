"""Workspace branding on the hosted connect page (issue 16): a display name, a logo and an
accent colour, set with `manage.py workspace brand WS …`.

The logo is stored in the database (no file storage to run) and shown as a `data:` URI in
an <img>: an SVG shown that way cannot run scripts or fetch anything. The text colour on
the accent is chosen for contrast (WCAG 2.2 AA: 4.5:1 for text), so no accent makes the
button unreadable."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from broker_app.models import WorkspaceBranding

DEFAULT_ACCENT = "#1d4ed8"
MAX_LOGO_BYTES = 100 * 1024
_HEX = re.compile(r"#[0-9a-fA-F]{6}\Z")


class BrandingError(ValueError):
    """Bad branding input; the message is safe to show."""


def _channel(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4


def luminance(hex_color: str) -> float:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_on(accent: str) -> str:
    """Black or white, whichever reads better on `accent` (one of them always reaches 4.5:1)."""
    return "#ffffff" if contrast(accent, "#ffffff") >= contrast(accent, "#000000") else "#000000"


def validate_accent(value: str) -> str:
    if not _HEX.match(value or ""):
        raise BrandingError("accent must be a colour written #RRGGBB")
    return value.lower()


def logo_content_type(data: bytes) -> str:
    """The image type of `data` by its first bytes (never by a file name), or BrandingError."""
    if len(data) > MAX_LOGO_BYTES:
        raise BrandingError(f"the logo is larger than {MAX_LOGO_BYTES // 1024} KB")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:2048].lower()):
        return "image/svg+xml"
    raise BrandingError("the logo must be a PNG, JPEG, WebP or SVG image")


def workspace_brand(
    *, workspace: str, display_name: str | None = None, accent: str | None = None, logo: bytes | None = None
) -> WorkspaceBranding:
    """Create or update a workspace's branding; None leaves a value as it is, b"" removes the logo."""
    if not workspace.strip():
        raise BrandingError("workspace is required")
    branding, _ = WorkspaceBranding.objects.get_or_create(workspace=workspace.strip())
    if display_name is not None:
        if len(display_name) > 128:
            raise BrandingError("display name is at most 128 characters")
        branding.display_name = display_name.strip()
    if accent is not None:
        branding.accent_color = validate_accent(accent) if accent else ""
    if logo is not None:
        branding.logo_content_type = logo_content_type(logo) if logo else ""
        branding.logo = logo
    branding.save()
    return branding


@dataclass(frozen=True)
class Brand:
    name: str
    accent: str
    on_accent: str
    logo_uri: str

    @property
    def style(self) -> str:
        """The page's one inline style block (allowed by its hash in the CSP)."""
        return f":root{{--accent:{self.accent};--on-accent:{self.on_accent}}}"

    @property
    def style_hash(self) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(self.style.encode()).digest()).decode() + "'"


def brand_for(workspace: str) -> Brand:
    branding = WorkspaceBranding.objects.filter(workspace=workspace).first()
    accent = (branding and branding.accent_color) or DEFAULT_ACCENT
    logo_uri = ""
    if branding and branding.logo and branding.logo_content_type:
        logo_uri = f"data:{branding.logo_content_type};base64," + base64.b64encode(bytes(branding.logo)).decode()
    return Brand(
        name=(branding and branding.display_name) or workspace,
        accent=accent,
        on_accent=text_on(accent),
        logo_uri=logo_uri,
    )
