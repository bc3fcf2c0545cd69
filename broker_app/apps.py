from django.apps import AppConfig


class BrokerAppConfig(AppConfig):
    name = "broker_app"
    verbose_name = "Dromos broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import dromos.celery  # noqa: F401  (the app the broker's shared tasks are sent with)
        from broker_app import checks

        checks.register()
        # Refuse to start with an unusable key ring: never serve garbage.
        checks.assert_keys_usable()
