"""ASGI entry point: Django for HTTP, Channels for WebSockets (routes in jobs.routing)."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccgsc_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402 - needs Django set up
from django.conf import settings  # noqa: E402

from ccgsc_site import accept_balance, immediate_write  # noqa: E402
from jobs.dispatch import queue_fill  # noqa: E402
from jobs.routing import websocket_urlpatterns  # noqa: E402

# Counted, so that the Daphnes sharing one port can even out new connections between them
# (ccgsc_site.accept_balance; only in processes the launcher started).
application = accept_balance.ConnectionCount(
    ProtocolTypeRouter({"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)})
)
accept_balance.start_from_environment(application)
# Frames go to the socket when written, not on the loop's next turn (ccgsc_site.immediate_write).
immediate_write.install()
# A job start's first fill request is not the process's first Celery publish, with its set-up.
queue_fill.sender_warm()

# What is loaded now lives as long as the process: the collector need not walk it again, and
# collects young objects in larger, rarer passes (settings.ASGI_GC_THRESHOLDS says why).
gc.freeze()
gc.set_threshold(*settings.ASGI_GC_THRESHOLDS)
