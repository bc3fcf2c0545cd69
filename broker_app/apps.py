from django.apps import AppConfig
from django.core import checks


class BrokerAppConfig(AppConfig):
    name = "broker_app"
    verbose_name = "Dromos broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from broker_app import checks as broker_checks

        checks.register(broker_checks.check_encryption_keys, checks.Tags.security)
        checks.register(broker_checks.check_provider_secrets, checks.Tags.database)
        checks.register(broker_checks.check_keys_match_data, checks.Tags.database)
        checks.register(broker_checks.check_allowed_cidrs, checks.Tags.security)
        checks.register(broker_checks.check_return_url_policy, checks.Tags.security)
        from broker_app import deploy_checks

        deploy_checks.register()  # tag "dromos": only `check --deploy` / `check --tag dromos`
        # Register the Celery tasks in every broker process (web processes queue them by name:
        # broker_app/queue.py), not only in workers, which import them by autodiscovery.
        import broker_app.tasks  # noqa: F401
        from broker_app.documents import DatabaseDocumentStore
        from broker_app.oauth import oidc

        oidc.use_store(DatabaseDocumentStore())

        # Refuse to start with an unusable key ring: never serve garbage.
        broker_checks.assert_keys_usable()
