"""`manage.py webhook add|list|remove|deliveries` — connection-event webhooks (broker)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, Q

from broker_app.models import WebhookDelivery, WebhookEndpoint
from broker_app.webhooks import EVENTS, WebhookError, webhook_endpoint_create, webhook_endpoint_remove
from dromos import wire


def _endpoint(options) -> WebhookEndpoint:
    if options.get("id"):
        try:
            return WebhookEndpoint.objects.get(pk=options["id"])
        except (WebhookEndpoint.DoesNotExist, ValidationError):
            raise CommandError(f"no webhook with id {options['id']!r}") from None
    if not (options.get("workspace") and options.get("url")):
        raise CommandError("name the webhook with --id, or with --workspace and --url")
    endpoint = WebhookEndpoint.objects.filter(
        workspace=options["workspace"],
        environment=options.get("environment") or wire.DEFAULT_ENVIRONMENT,
        url=options["url"],
    ).first()
    if endpoint is None:
        raise CommandError(f"workspace {options['workspace']!r} has no webhook for that url")
    return endpoint


class Command(BaseCommand):
    help = (
        "Manage connection-event webhooks. `add` prints the endpoint's signing secret once, alone, as "
        "the last line: receivers verify the Dromos-Signature header with it."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{add,list,remove,deliveries}")
        add = sub.add_parser("add", help="Add a webhook for a workspace (prints the signing secret once)")
        add.add_argument("--workspace", required=True)
        add.add_argument("--environment", default=wire.DEFAULT_ENVIRONMENT, help="The workspace's environment")
        add.add_argument("--url", required=True, help="https URL that receives POSTed JSON events")
        add.add_argument(
            "--event",
            action="append",
            default=[],
            choices=EVENTS,
            help="Send only this event (repeatable); default: every event",
        )
        listing = sub.add_parser("list", help="List webhooks with delivery counts")
        listing.add_argument("--workspace")
        remove = sub.add_parser("remove", help="Remove a webhook and its delivery history")
        remove.add_argument("--id")
        remove.add_argument("--workspace")
        remove.add_argument("--url")
        remove.add_argument("--environment")
        deliveries = sub.add_parser("deliveries", help="Show the latest deliveries of a webhook")
        deliveries.add_argument("--id")
        deliveries.add_argument("--workspace")
        deliveries.add_argument("--url")
        deliveries.add_argument("--environment")
        deliveries.add_argument("--limit", type=int, default=20)

    def handle(self, *args, **options):
        getattr(self, f"_{options['action']}")(options)

    def _add(self, options):
        try:
            endpoint, secret = webhook_endpoint_create(
                workspace=options["workspace"],
                url=options["url"],
                events=options["event"],
                environment=options["environment"],
            )
        except WebhookError as exc:
            raise CommandError(str(exc)) from None
        events = ", ".join(endpoint.events) or "every event"
        self.stderr.write(
            f"added webhook {endpoint.pk} for workspace {endpoint.workspace} ({events}); "
            "its signing secret is shown once:"
        )
        self.stdout.write(secret)

    def _list(self, options):
        endpoints = WebhookEndpoint.objects.annotate(
            delivered=Count("deliveries", filter=Q(deliveries__status=WebhookDelivery.Status.DELIVERED)),
            pending=Count("deliveries", filter=Q(deliveries__status=WebhookDelivery.Status.PENDING)),
            failed=Count("deliveries", filter=Q(deliveries__status=WebhookDelivery.Status.FAILED)),
        )
        if options["workspace"]:
            endpoints = endpoints.filter(workspace=options["workspace"])
        for endpoint in endpoints:
            state = "enabled" if endpoint.enabled else "disabled"
            self.stdout.write(
                f"{endpoint.pk}\t{endpoint.workspace}\t{endpoint.url}\t{state}\t"
                f"events={','.join(endpoint.events) or 'all'}\tdelivered={endpoint.delivered}\t"
                f"pending={endpoint.pending}\tfailed={endpoint.failed}"
            )

    def _remove(self, options):
        endpoint = _endpoint(options)
        dropped = webhook_endpoint_remove(endpoint=endpoint)
        self.stdout.write(
            f"removed webhook {endpoint.url} of workspace {endpoint.workspace} ({dropped} deliveries dropped)"
        )

    def _deliveries(self, options):
        endpoint = _endpoint(options)
        for delivery in endpoint.deliveries.order_by("-created_at")[: max(1, options["limit"])]:
            when = delivery.delivered_at or delivery.next_attempt_at
            self.stdout.write(
                "\t".join(
                    (
                        str(delivery.pk),
                        f"{delivery.created_at:%Y-%m-%dT%H:%M:%SZ}",
                        delivery.event,
                        delivery.connection_id,
                        delivery.status,
                        f"attempts={delivery.attempts}",
                        f"last_status={delivery.last_status_code or '-'}",
                        f"{'delivered_at' if delivery.delivered_at else 'next_attempt_at'}={when:%Y-%m-%dT%H:%M:%SZ}"
                        if when
                        else "-",
                        delivery.last_error or "-",
                    )
                )
            )
