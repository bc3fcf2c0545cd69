"""`manage.py workspace brand|show` — how the hosted connect page presents a workspace (broker)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from broker_app.branding import BrandingError, brand_for, workspace_brand


class Command(BaseCommand):
    help = "Workspace branding on the hosted connect page: display name, logo, accent colour."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{brand,show}")
        brand = sub.add_parser("brand", help="Set a workspace's display name, logo and accent colour")
        brand.add_argument("workspace")
        brand.add_argument("--display-name")
        brand.add_argument("--logo", help="PNG, JPEG, WebP or SVG file, at most 100 KB")
        brand.add_argument("--no-logo", action="store_true", help="Remove the logo")
        brand.add_argument("--accent", help="#RRGGBB; the button text colour is chosen for contrast")
        show = sub.add_parser("show", help="Show a workspace's branding")
        show.add_argument("workspace")

    def handle(self, *args, **options):
        if options["action"] == "brand":
            logo = None
            if options["no_logo"]:
                logo = b""
            elif options["logo"]:
                try:
                    logo = Path(options["logo"]).read_bytes()
                except OSError as exc:
                    raise CommandError(f"cannot read the logo: {exc.strerror}") from None
            try:
                workspace_brand(
                    workspace=options["workspace"],
                    display_name=options["display_name"],
                    accent=options["accent"],
                    logo=logo,
                )
            except BrandingError as exc:
                raise CommandError(str(exc)) from None
        brand = brand_for(options["workspace"])
        self.stdout.write(f"workspace:    {options['workspace']}")
        self.stdout.write(f"display name: {brand.name}")
        self.stdout.write(f"accent:       {brand.accent} (text {brand.on_accent})")
        self.stdout.write(f"logo:         {'yes' if brand.logo_uri else 'no'}")
