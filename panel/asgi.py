"""ASGI entry point: gateway routes on the fast path, the rest through Django, WebSockets via Channels."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from ai.api.fastpath import FastPathHandler, is_fast_path  # noqa: E402
from ai.routing import websocket_urlpatterns  # noqa: E402
from panel.security import SecurityHeadersMiddleware  # noqa: E402

fast_app = FastPathHandler()
django_http_app = django_asgi_app
if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_http_app = ASGIStaticFilesHandler(django_asgi_app)


# Django and the static files get the HTTPS redirect and the security headers from this
# wrapper; the fast path does both itself (panel.security), one layer fewer per request.
secured_http_app = SecurityHeadersMiddleware(django_http_app)


async def http_app(scope, receive, send):
    if is_fast_path(scope["path"]):
        return await fast_app(scope, receive, send)
    return await secured_http_app(scope, receive, send)


# The youngest generation collected every 7,000 net new objects, not 700 (issue 20).
GC_THRESHOLDS = (7000, 10, 10)


def settle_heap() -> None:
    """Move what startup made (Django, the apps, the URL conf: ~180,000 objects that live
    as long as the process) out of the garbage collector's way, and collect less often.

    Measured under wrk at c=64 (issue 20, tests/bench/README.md), the collector's own time
    in the gateway process: 15 % of its CPU, most of it full collections (34 of ~100 ms in
    a 37 s run) walking that startup heap, because a busy server's in-flight requests
    survive the young generations and count towards the next full one. Frozen
    (``gc.freeze``), a full collection walks only what came after: 8 %. With the youngest
    generation collected ten times less often (``GC_THRESHOLDS``), 2.8 %: most of a
    request's objects are freed by their reference counts before a collection sees them.
    Garbage is collected first, so nothing already unreachable is kept. uvicorn's lifespan
    runs it (production, `make run`); daphne has no lifespan.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def lifespan_app(scope, receive, send):
    """ASGI lifespan: on shutdown, write the usage, settlements and charges still pending.

    uvicorn runs it after the last in-flight request has finished, so a
    graceful stop (SIGTERM) loses no usage. Daphne has no lifespan; its exit
    runs the same flush from ``atexit``.
    """
    from ai.gateway import pipeline
    from ai.gateway.upstream import close_session

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            settle_heap()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await pipeline.shutdown()
            await close_session()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "lifespan": lifespan_app,
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
