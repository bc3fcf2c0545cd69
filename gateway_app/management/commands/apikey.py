"""`manage.py apikey create|list|revoke` — agent API keys (gateway)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from gateway_app.keys import apikey_create, apikey_revoke
from gateway_app.models import ALL_SCOPES, ApiKey


class Command(BaseCommand):
    help = "Create, list or revoke agent API keys. A new key is printed once, alone, as the last line."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = sub.add_parser("create", help="Create a key (printed once)")
        create.add_argument("--workspace", required=True)
        create.add_argument("--name", required=True)
        create.add_argument(
            "--scope",
            action="append",
            default=[],
            choices=ALL_SCOPES,
            help="Limit the key to these scopes (repeatable); default: all",
        )
        listing = sub.add_parser("list", help="List keys (prefixes only)")
        listing.add_argument("--workspace")
        revoke = sub.add_parser("revoke", help="Revoke a key by prefix")
        revoke.add_argument("--prefix", required=True)

    def handle(self, *args, **options):
        action = options["action"]
        if action == "create":
            try:
                key, plaintext = apikey_create(
                    workspace=options["workspace"], name=options["name"], scopes=options["scope"] or None
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stderr.write(f"created key {key.prefix} for workspace {key.workspace}; it is shown once:")
            self.stdout.write(plaintext)
        elif action == "list":
            keys = ApiKey.objects.all()
            if options["workspace"]:
                keys = keys.filter(workspace=options["workspace"])
            for key in keys:
                status = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                used = f"{key.last_used_at:%Y-%m-%dT%H:%M:%SZ}" if key.last_used_at else "never"
                self.stdout.write(
                    f"{key.prefix}\t{key.workspace}\t{key.name}\t{status}\tlast_used={used}\t"
                    f"scopes={','.join(key.scopes) or 'all'}"
                )
        elif action == "revoke":
            try:
                key = apikey_revoke(prefix=options["prefix"])
            except ApiKey.DoesNotExist:
                raise CommandError(f"no key with prefix {options['prefix']!r}") from None
            self.stdout.write(f"revoked {key.prefix}")
