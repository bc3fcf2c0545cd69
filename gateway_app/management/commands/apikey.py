"""`manage.py apikey create|list|revoke` — agent API keys (gateway)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from dromos.wire import DEFAULT_ENVIRONMENT
from gateway_app.egress import PolicyError, apikey_set_policy, policy_load, rule_parse
from gateway_app.keys import apikey_revoke
from gateway_app.models import KNOWN_SCOPES, ApiKey
from gateway_app.restrictions import key_create


def parse_moment(raw: str, flag: str) -> datetime:
    """A date (its midnight UTC) or an ISO 8601 date-time (UTC when it names no zone)."""
    try:
        moment = parse_datetime(raw)
        if moment is None:
            day = parse_date(raw)
            moment = datetime(day.year, day.month, day.day) if day else None
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"{flag} must be a date (2026-11-29) or an ISO 8601 date-time, not {raw!r}")
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def _restriction_text(key: ApiKey) -> str:
    parts = []
    if key.allowed_providers is not None:
        parts.append(f"providers={','.join(key.allowed_providers)}")
    if key.allowed_user_ids is not None:
        parts.append(f"user_ids={len(key.allowed_user_ids)}")
    if key.user_id_prefix:
        parts.append(f"user_id_prefix={key.user_id_prefix}")
    if key.allowed_cidrs is not None:
        parts.append(f"cidrs={','.join(key.allowed_cidrs)}")
    if key.expires_at is not None:
        parts.append(f"expires={key.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    if key.parent_id is not None:
        parts.append(f"minted_from={key.parent.prefix}")
    return "".join(f"\t{part}" for part in parts)


class Command(BaseCommand):
    help = "Create, list or revoke agent API keys. A new key is printed once, alone, as the last line."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke,policy}")
        create = sub.add_parser("create", help="Create a key (printed once)")
        create.add_argument("--workspace", required=True)
        create.add_argument("--name", required=True)
        create.add_argument(
            "--environment",
            default=DEFAULT_ENVIRONMENT,
            help=f"The workspace's environment (default: {DEFAULT_ENVIRONMENT})",
        )
        create.add_argument(
            "--scope",
            action="append",
            default=[],
            choices=KNOWN_SCOPES,
            help="Limit the key to these scopes (repeatable); default: all but admin (the management API)",
        )
        _policy_arguments(create)
        create.add_argument("--provider", action="append", default=None, help="Only these providers (repeatable)")
        create.add_argument("--user-id", action="append", default=None, help="Only these user_ids (repeatable)")
        create.add_argument("--user-id-prefix", help="Only user_ids starting with this")
        create.add_argument("--cidr", action="append", default=None, help="Only from these networks (repeatable)")
        create.add_argument("--expires", help="Refused from then on: a date (midnight UTC) or ISO 8601 date-time")
        policy = sub.add_parser("policy", help="Set or clear a key's proxy egress policy")
        policy.add_argument("--prefix", required=True)
        _policy_arguments(policy)
        policy.add_argument("--default", action="store_true", help="Clear the rules: PROXY_DEFAULT_POLICY applies")
        listing = sub.add_parser("list", help="List keys (prefixes only)")
        listing.add_argument("--workspace")
        revoke = sub.add_parser("revoke", help="Revoke a key by prefix")
        revoke.add_argument("--prefix", required=True)

    def handle(self, *args, **options):
        action = options["action"]
        if action == "create":
            rules = _rules(options)
            expires = parse_moment(options["expires"], "--expires") if options["expires"] else None
            try:
                with transaction.atomic():
                    key, plaintext = key_create(
                        workspace=options["workspace"],
                        name=options["name"],
                        scopes=options["scope"] or None,
                        providers=options["provider"],
                        user_ids=options["user_id"],
                        user_id_prefix=options["user_id_prefix"],
                        cidrs=options["cidr"],
                        expires_at=expires,
                        environment=options["environment"],
                    )
                    if rules is not None:
                        apikey_set_policy(key=key, rules=rules)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stderr.write(f"environment {key.environment}")
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
                    + ("" if key.egress_policy is None else f"\tpolicy={len(key.egress_policy)} rule(s)")
                    # Production (the default, and every key older than environments) says nothing.
                    + ("" if key.environment == DEFAULT_ENVIRONMENT else f"\tenvironment={key.environment}")
                    + _restriction_text(key)
                )
        elif action == "policy":
            key = ApiKey.objects.filter(prefix=options["prefix"]).first()
            if key is None:
                raise CommandError(f"no key with prefix {options['prefix']!r}")
            rules = None if options["default"] else _rules(options)
            if rules is None and not options["default"]:
                raise CommandError("give --allow rules, --policy FILE or --default")
            apikey_set_policy(key=key, rules=rules)
            for rule in rules or []:
                self.stdout.write(f"allow {rule}")
            self.stdout.write(f"policy of {key.prefix}: {'default' if rules is None else f'{len(rules)} rule(s)'}")
        elif action == "revoke":
            try:
                key = apikey_revoke(prefix=options["prefix"])
            except ApiKey.DoesNotExist:
                raise CommandError(f"no key with prefix {options['prefix']!r}") from None
            self.stdout.write(f"revoked {key.prefix}")


def _policy_arguments(parser) -> None:
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar='"PROVIDER METHODS PATH_GLOB"',
        help='Proxy egress rule (repeatable), e.g. "google GET /gmail/v1/users/me/messages*", "github * /repos/acme/*"',
    )
    parser.add_argument("--policy", metavar="FILE.json", help='Rules from a file: {"allow": [rules]}')


def _rules(options) -> list | None:
    """The rules given (None when neither --allow nor --policy was)."""
    if not options["allow"] and not options["policy"]:
        return None
    try:
        rules = [rule_parse(text) for text in options["allow"]]
        if options["policy"]:
            rules += policy_load(options["policy"])
    except PolicyError as exc:
        raise CommandError(f"policy not saved: {exc}") from None
    return rules
