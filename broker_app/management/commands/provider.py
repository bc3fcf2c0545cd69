"""`manage.py provider upsert|list|remove|templates|import|export|docs` — configure providers (broker)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from broker_app.models import Provider
from broker_app.oauth import oidc
from broker_app.oauth.assertions import PrivateKeyError
from broker_app.providers import catalog_docs, catalog_io
from broker_app.providers.registry import resolve, resolve_machine, resolve_static, set_client_secret, set_private_key
from broker_app.providers.spec import (
    ProviderConfigError,
    builtin_catalog,
    catalog,
    extra_catalog,
    missing_params,
    param_specs,
    resolve_values,
)


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
        sub.add_parser("list", help="List configured providers")
        remove = sub.add_parser("remove", help="Remove a provider without connections (else disable it)")
        remove.add_argument("--name", required=True)
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
            for provider in Provider.objects.all():
                state = "enabled" if provider.enabled else "disabled"
                has_secret = "secret set" if provider.client_secret_enc else "no secret"
                self.stdout.write(
                    f"{provider.name}\t{provider.template}\t{state}\t"
                    f"client_id={provider.client_id or '-'}\t{has_secret}"
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
            provider = Provider.objects.filter(name=options["name"].lower()).first()
            if provider is None:
                raise CommandError(f"no provider named {options['name']!r}")
            if provider.connections.exists():
                provider.enabled = False
                provider.save(update_fields=["enabled", "updated_at"])
                self.stdout.write(f"provider {provider.name} has connections: disabled instead of removed")
            else:
                provider.delete()
                self.stdout.write(f"removed provider {options['name']}")

    @transaction.atomic
    def _upsert(self, options):
        name = options["name"].strip().lower()
        provider = Provider.objects.filter(name=name).first() or Provider(name=name)
        template_key = (
            options["template"]
            or provider.template
            or (name if name in catalog() else ("oidc" if options["discovery_url"] else None))
        )
        if template_key not in catalog():
            raise CommandError(f"unknown template {template_key!r}; see `manage.py provider templates`")
        provider.template = template_key
        for option, field in (
            ("display_name", "display_name"),
            ("discovery_url", "discovery_url"),
            ("authorize_url", "authorize_url"),
            ("token_url", "token_url"),
            ("revocation_url", "revocation_url"),
            ("userinfo_url", "userinfo_url"),
            ("api_base_url", "api_base_url"),
            ("client_id", "client_id"),
            ("token_auth", "token_auth"),
        ):
            if options[option] is not None:
                setattr(provider, field, options[option])
        if options["default_scopes"] is not None:
            provider.default_scopes = options["default_scopes"].split()
        if options["authorize_param"]:
            extra = dict(map(_key_value, options["authorize_param"]))
            provider.authorize_params = {**provider.authorize_params, **extra}
        if options["setting"]:
            values = dict(map(_key_value, options["setting"]))
            if "allowed_tenants" in values:
                values["allowed_tenants"] = [t for t in values["allowed_tenants"].split(",") if t]
            provider.settings = {**provider.settings, **values}
        provider.enabled = not options["disable"]
        if options["client_secret"] is not None:
            set_client_secret(provider, options["client_secret"])
        if options.get("private_key_file"):
            try:
                pem = Path(options["private_key_file"]).read_text(encoding="utf-8")
            except (OSError, UnicodeError) as exc:
                raise CommandError(
                    f"provider not saved: cannot read --private-key-file ({type(exc).__name__})"
                ) from None
            try:
                set_private_key(provider, pem)
            except PrivateKeyError as exc:
                raise CommandError(f"provider not saved: {exc}") from None
        created = provider._state.adding
        try:
            provider.full_clean(exclude=["client_secret_enc", "private_key_enc"])
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
            raise CommandError(f"provider not saved: {problems}") from None
        entry = catalog()[template_key]
        try:
            # Template values (tenant, shop, host …) must fit the catalog's pattern, always:
            # they become part of the URLs the broker calls.
            fixed = resolve_values(entry, fixed=provider.settings, given={})
        except ProviderConfigError as exc:
            raise CommandError(f"provider not saved: {exc}") from None
        specs = param_specs(entry)
        operator_missing = [name for name in missing_params(entry, fixed) if specs[name].operator_only]
        if operator_missing:
            name = operator_missing[0]
            raise CommandError(
                f"provider not saved: template {template_key} needs --setting {name}=… (e.g. {specs[name].example})"
            )
        provider.save()
        if not options["no_check"]:
            oidc.cache_clear()
            if not missing_params(entry, fixed):
                try:
                    if entry.get("auth_mode", "oauth2") == "oauth2":
                        resolve(provider)
                    elif entry["auth_mode"] == "app":
                        resolve_machine(provider)
                    else:
                        resolve_static(provider)
                except ProviderConfigError as exc:
                    # Raised inside the transaction: nothing is saved.
                    raise CommandError(
                        f"provider not saved, it would not be usable: {exc} (use --no-check to save anyway)"
                    ) from None
        self.stdout.write(
            f"{'created' if created else 'updated'} provider {provider.name} "
            f"(template {template_key}, id {provider.pk})"
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
