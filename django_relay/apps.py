from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class RelayConfig(AppConfig):
    name = "django_relay"
    verbose_name = "Relay"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_relay import checks, signal_handlers  # noqa: F401  (registers the checks)

        signal_handlers.connect()

        # Workers register themselves when their module is imported.
        autodiscover_modules("workers")
