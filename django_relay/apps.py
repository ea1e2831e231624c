from importlib.util import find_spec

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

from django_relay.conf import settings


class RelayConfig(AppConfig):
    name = "django_relay"
    verbose_name = "Relay"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_relay import checks, signal_handlers  # noqa: F401  (registers the checks)

        signal_handlers.connect()
        # Without the package, django_relay.E009 says so rather than a crash here.
        if settings.METRICS and find_spec("prometheus_client"):
            from django_relay import metrics

            metrics.connect()

        # Workers register themselves when their module is imported.
        autodiscover_modules("workers")
