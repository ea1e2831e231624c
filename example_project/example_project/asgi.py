"""ASGI entry point: ``uvicorn example_project.asgi:application`` (``manage.py relaydemo``
starts it for you).

HTTP goes to Django; websockets at ``/ws/jobs/`` (all jobs) and
``/ws/jobs/<id>/`` (one job) stream job events to staff users. With ``DEBUG`` the static
files (the admin's styles) are served too, as ``runserver`` would.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# Set Django up before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path  # noqa: E402

from django_relay.consumers import JobEventsConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(
                    [
                        path("ws/jobs/", JobEventsConsumer.as_asgi()),
                        path("ws/jobs/<int:job_id>/", JobEventsConsumer.as_asgi()),
                    ]
                )
            )
        ),
    }
)
