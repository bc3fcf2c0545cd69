from django.apps import AppConfig


class DromosConfig(AppConfig):
    name = "dromos"
    verbose_name = "Dromos (shared)"

    def ready(self) -> None:
        from dromos.checks import register_checks

        register_checks()
