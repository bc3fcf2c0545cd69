"""Draw the hosted connect page's provider logos: a letter in a circle per catalog entry.

    python devtools/connect_logos.py      # writes broker_app/static/connect/logos/<template>.svg

Simple, self-made SVGs (no third-party artwork, no requests from the page); the colour is
derived from the template key, dark enough for white text (contrast >= 4.5:1). A template
without a file gets default.svg (connect_views._logo)."""

from __future__ import annotations

import hashlib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "broker_app" / "providers" / "catalog.toml"
OUT = ROOT / "broker_app" / "static" / "connect" / "logos"
# Hues with white text at >= 4.5:1 (checked by tests/broker/test_connect_page.py).
PALETTE = ("#1d4ed8", "#047857", "#b91c1c", "#6d28d9", "#a21caf", "#0e7490", "#c2410c", "#374151", "#4338ca", "#be123c")


def svg(letter: str, colour: str) -> str:
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="64" height="64" aria-hidden="true">'
        f'<circle cx="32" cy="32" r="32" fill="{colour}"/>'
        '<text x="32" y="43" text-anchor="middle" font-family="Arial, Helvetica, sans-serif" font-size="30" '
        f'font-weight="700" fill="#ffffff">{letter}</text></svg>\n'
    )


def main() -> int:
    catalog = tomllib.loads(CATALOG.read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    for key, entry in catalog.items():
        name = entry.get("display_name", key)
        colour = PALETTE[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(PALETTE)]
        (OUT / f"{key}.svg").write_text(svg(name[:1].upper(), colour))
    (OUT / "default.svg").write_text(svg("?", "#374151"))
    print(f"wrote {len(catalog) + 1} logos to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
