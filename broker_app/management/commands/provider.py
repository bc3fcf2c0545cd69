"""`manage.py provider upsert|list|remove|templates|import|export|docs` — configure providers (broker)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from broker_app.models import Provider
from broker_app.providers import catalog_docs, catalog_io
from broker_app.providers.spec import builtin_catalog, catalog, extra_catalog
from broker_app.services.providers import Owner, provider_upsert
from dromos import wire
from dromos.errors import InvalidRequest


def _key_value(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise CommandError(f"expected key=value, got {raw!r}")
    return key, value


class Command(BaseCommand):
    help = "Create, update, list or remove OAuth providers."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(
            dest="action", required=True, metavar="{upsert,list,remove,templates,import,export,docs}"
        )
        upsert = sub.add_parser("upsert", help="Create or update a provider")
        upsert.add_argument("--name", required=True, help="Provider name agents use (e.g. google)")
        upsert.add_argument("--workspace", help="The owning workspace (default: shared by every workspace)")
        upsert.add_argument(
            "--environment", help=f"The owning workspace's environment (default: {wire.DEFAULT_ENVIRONMENT})"
        )
        upsert.add_argument(
            "--template", help="Catalog template key (default: the name, or 'oidc' with --discovery-url)"
        )
        upsert.add_argument("--display-name")
        upsert.add_argument("--discovery-url")
        upsert.add_argument("--authorize-url")
        upsert.add_argument("--token-url")
        upsert.add_argument("--revocation-url")
        upsert.add_argument("--userinfo-url")
        upsert.add_argument("--api-base-url", help="Where the API proxy sends calls (overrides the catalog's)")
        upsert.add_argument("--client-id")
        upsert.add_argument("--client-secret")
        upsert.add_argument(
            "--private-key-file",
            metavar="PATH",
            help="The app's PEM RSA private key (GitHub App, Google service account), stored encrypted",
        )
        upsert.add_argument("--default-scopes", help='Space-separated, e.g. "openid email profile"')
        upsert.add_argument("--authorize-param", action="append", default=[], metavar="KEY=VALUE")
        upsert.add_argument(
            "--setting",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Fixed template parameter or hook setting, e.g. tenant=contoso.onmicrosoft.com",
        )
        upsert.add_argument("--token-auth", choices=[c.value for c in Provider.TokenAuth])
        upsert.add_argument("--disable", action="store_true")
        upsert.add_argument("--no-check", action="store_true", help="Do not resolve endpoints after saving")
        listing = sub.add_parser("list", help="List configured providers")
        listing.add_argument("--workspace", help="Only this workspace's own providers")
        remove = sub.add_parser("remove", help="Remove a provider without connections (else disable it)")
        remove.add_argument("--name", required=True)
        remove.add_argument("--workspace", help="The owning workspace (default: the shared provider)")
        remove.add_argument("--environment", help=f"default: {wire.DEFAULT_ENVIRONMENT}")
        sub.add_parser("templates", help="List catalog templates")
        imp = sub.add_parser(
            "import",
            help="Add provider templates from a TOML file (validated like the built-in catalog; "
            "written to PROVIDER_CATALOG_EXTRA)",
        )
        imp.add_argument("file", help="A TOML file of [template_key] tables, as `export` writes them")
        imp.add_argument("--check", action="store_true", help="Validate only, write nothing")
        export = sub.add_parser("export", help="Print templates as TOML that `import` accepts")
        export.add_argument("name", nargs="?", help="A template key (default: every imported template)")
        docs = sub.add_parser("docs", help="Rewrite the generated parts of docs/providers.md from the catalog")
        docs.add_argument("--check", action="store_true", help="Exit non-zero when the file is out of date")
        docs.add_argument("--file", default=None, help="Default: docs/providers.md in the source tree")

    def handle(self, *args, **options):
        action = options["action"]
        if action == "upsert":
            self._upsert(options)
        elif action == "list":
            providers = Provider.objects.all()
            if options["workspace"]:
                providers = providers.filter(workspace=options["workspace"])
            for provider in providers:
                state = "enabled" if provider.enabled else "disabled"
                has_secret = "secret set" if provider.client_secret_enc else "no secret"
                owner = f"\tworkspace={provider.workspace}/{provider.environment}" if provider.workspace else ""
                self.stdout.write(
                    f"{provider.name}\t{provider.template}\t{state}\t"
                    f"client_id={provider.client_id or '-'}\t{has_secret}{owner}"
                )
        elif action == "templates":
            imported = extra_catalog()
            for key, entry in sorted(catalog().items()):
                origin = "\timported" if key in imported else ""
                self.stdout.write(f"{key}\t{entry.get('display_name', key)}{origin}")
        elif action == "import":
            self._import(options)
        elif action == "export":
            self._export(options)
        elif action == "docs":
            self._docs(options)
        elif action == "remove":
            try:
                owner = Owner.of(options["workspace"], options["environment"])
            except InvalidRequest as exc:
                raise CommandError(exc.message) from None
            provider = Provider.objects.filter(
                workspace=owner.workspace, environment=owner.environment, name=options["name"].lower()
            ).first()
            if provider is None:
                raise CommandError(f"no provider named {options['name']!r}")
            if provider.connections.exists():
                provider.enabled = False
                provider.save(update_fields=["enabled", "updated_at"])
                self.stdout.write(f"provider {provider.name} has connections: disabled instead of removed")
            else:
                provider.delete()
                self.stdout.write(f"removed provider {options['name']}")

    def _upsert(self, options):
        try:
            owner = Owner.of(options["workspace"], options["environment"] if options["workspace"] else None)
        except InvalidRequest as exc:
            raise CommandError(exc.message) from None
        if options["environment"] and not options["workspace"]:
            raise CommandError("--environment needs --workspace (a shared provider serves every environment)")
        fields: dict = {}
        for option in (
            "template",
            "display_name",
            "discovery_url",
            "authorize_url",
            "token_url",
            "revocation_url",
            "userinfo_url",
            "api_base_url",
            "client_id",
            "token_auth",
        ):
            if options[option] is not None:
                fields[option] = options[option]
        if options["default_scopes"] is not None:
            fields["default_scopes"] = options["default_scopes"].split()
        existing = Provider.objects.filter(
            workspace=owner.workspace, environment=owner.environment, name=options["name"].strip().lower()
        ).first()
        if options["authorize_param"]:
            extra = dict(map(_key_value, options["authorize_param"]))
            fields["authorize_params"] = {**(existing.authorize_params if existing else {}), **extra}
        if options["setting"]:
            values = dict(map(_key_value, options["setting"]))
            if "allowed_tenants" in values:
                values["allowed_tenants"] = [t for t in values["allowed_tenants"].split(",") if t]
            fields["settings"] = {**(existing.settings if existing else {}), **values}
        fields["enabled"] = not options["disable"]
        private_key = None
        if options.get("private_key_file"):
            try:
                private_key = Path(options["private_key_file"]).read_text(encoding="utf-8")
            except (OSError, UnicodeError) as exc:
                raise CommandError(
                    f"provider not saved: cannot read --private-key-file ({type(exc).__name__})"
                ) from None
        try:
            provider, created = provider_upsert(
                owner=owner,
                name=options["name"],
                fields=fields,
                client_secret=options["client_secret"],
                private_key=private_key,
                check=not options["no_check"],
                operator=True,
            )
        except InvalidRequest as exc:
            message = exc.message
            if "needs the setting" in message:  # the command's spelling of it
                message = message.replace("needs the setting ", "needs --setting ").replace(" (e.g. ", "=… (e.g. ")
            if "would not be usable" in message:
                message += " (use --no-check to save anyway)"
            raise CommandError(message) from None
        owned = f" for workspace {owner.workspace} ({owner.environment})" if owner.workspace else ""
        self.stdout.write(
            f"{'created' if created else 'updated'} provider {provider.name}{owned} "
            f"(template {provider.template}, id {provider.pk})"
        )

    def _import(self, options):
        path = Path(options["file"])
        try:
            if options["check"]:
                entries = catalog_io.parse(catalog_io.read(path))
                problems = catalog_io.problems(entries, builtin=builtin_catalog())
                if problems:
                    raise catalog_io.CatalogFileError(catalog_io.first(problems))
                self.stdout.write(f"{path}: {len(entries)} template(s) valid: {', '.join(sorted(entries))}")
                return
            keys = catalog_io.import_file(path)
        except catalog_io.CatalogFileError as exc:
            raise CommandError(f"nothing imported: {exc}") from None
        self.stdout.write(f"imported {len(keys)} template(s): {', '.join(keys)} (into {catalog_io.target()})")

    def _export(self, options):
        name = options["name"]
        if name:
            entries = catalog()
            if name not in entries:
                raise CommandError(f"unknown template {name!r}; see `manage.py provider templates`")
            chosen = {name: entries[name]}
        else:
            chosen = extra_catalog()
            if not chosen:
                raise CommandError("no imported templates to export; name a template key to export it")
        self.stdout.write(catalog_io.dumps(chosen), ending="")

    def _docs(self, options):
        path = Path(options["file"] or Path(settings.BASE_DIR) / "docs" / "providers.md")
        try:
            current = path.read_text(encoding="utf-8")
            rendered = catalog_docs.render(current)
        except (OSError, catalog_docs.DocsLayoutError) as exc:
            raise CommandError(str(exc)) from None
        if rendered == current:
            self.stdout.write(f"{path} is up to date")
        elif options["check"]:
            raise CommandError(f"{path} is out of date: run `manage.py provider docs`")
        else:
            catalog_io.write_atomically(path, rendered)
            self.stdout.write(f"rewrote {path}")
