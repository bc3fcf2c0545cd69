"""Django's `check`, plus: `--tag dromos` alone runs Dromos' deployment checks (secrets,
keys, providers, database, Redis, broker reachability) without the rest of `--deploy`.

Those checks are registered as deployment checks so plain `check`, `migrate` and test runs
never need a reachable broker or provider."""

from django.core.management.commands.check import Command as DjangoCheckCommand

from dromos.checks import CHECK_TAG


class Command(DjangoCheckCommand):
    help = DjangoCheckCommand.help + " `--tag dromos` runs Dromos' deployment checks (they need no --deploy)."

    def handle(self, *app_labels, **options):
        if CHECK_TAG in (options.get("tags") or []):
            options["deploy"] = True
        return super().handle(*app_labels, **options)
