"""Workspace branding (`manage.py workspace brand`) and its contrast rule."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from broker_app.branding import brand_for, contrast, text_on
from broker_app.models import WorkspaceBranding

pytestmark = pytest.mark.django_db

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="10" height="10"/></svg>'


def test_brand_command_sets_name_logo_and_accent(tmp_path):
    logo = tmp_path / "logo.svg"
    logo.write_bytes(SVG)
    out = StringIO()
    call_command(
        "workspace",
        "brand",
        "ws-a",
        "--display-name",
        "Acme Agents",
        "--logo",
        str(logo),
        "--accent",
        "#FFCC00",
        stdout=out,
    )
    assert "display name: Acme Agents" in out.getvalue()
    brand = brand_for("ws-a")
    assert brand.name == "Acme Agents" and brand.accent == "#ffcc00"
    assert brand.on_accent == "#000000"  # yellow takes black text
    assert brand.logo_uri.startswith("data:image/svg+xml;base64,")
    call_command("workspace", "brand", "ws-a", "--no-logo", stdout=StringIO())
    assert brand_for("ws-a").logo_uri == "" and brand_for("ws-a").name == "Acme Agents"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--accent", "red"], "#RRGGBB"),
        (["--accent", "#12345"], "#RRGGBB"),
        (["--logo", "__file__:<html><script>alert(1)</script>"], "PNG, JPEG, WebP or SVG"),
        (["--logo", "__file__:" + "<svg>" + "x" * 110_000], "larger than"),
        (["--logo", "/nonexistent/logo.png"], "cannot read"),
    ],
)
def test_brand_command_refuses_bad_input(tmp_path, args, message):
    if args[1].startswith("__file__:"):
        path = tmp_path / "logo"
        path.write_text(args[1].removeprefix("__file__:"))
        args = [args[0], str(path)]
    with pytest.raises(CommandError, match=message):
        call_command("workspace", "brand", "ws-b", *args, stdout=StringIO())
    assert not WorkspaceBranding.objects.filter(workspace="ws-b", accent_color__gt="").exists()


def test_every_accent_gets_readable_text():
    for accent in ("#000000", "#ffffff", "#777777", "#1d4ed8", "#ffcc00", "#ff0000", "#00ff00", "#0000ff", "#808080"):
        assert contrast(accent, text_on(accent)) >= 4.5, accent
    assert brand_for("unbranded").name == "unbranded"
