from django.apps import AppConfig


class BrokerAppConfig(AppConfig):
    name = "broker_app"
    verbose_name = "Dromos broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import dromos.celery  # noqa: F401  (the app the broker's shared tasks are sent with)
        from broker_app import checks

        checks.register()
        # Register the Celery tasks in every broker process (web processes queue them by name:
        # broker_app/queue.py), not only in workers, which import them by autodiscovery.
        import broker_app.tasks  # noqa: F401
        from broker_app.documents import DatabaseDocumentStore
        from broker_app.oauth import oidc

        oidc.use_store(DatabaseDocumentStore())
        # Refuse to start with an unusable key ring: never serve garbage.
        checks.assert_keys_usable()
