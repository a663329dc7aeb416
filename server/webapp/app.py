"""The Starlette application: routes wrapped in the drain and the edge middleware, bound to one Runtime."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.types import ASGIApp

from .edge import HEADER_APP_VERSION, HEADER_SERVER_ID, ServerHeadersMiddleware, TrustedProxyMiddleware
from .routes import routes
from .runtime import Runtime
from .settings import Settings


class WebApp(Starlette):
    """Starlette app whose identity headers wrap even the built-in 500 handler."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(routes=routes())
        self.state.runtime = runtime
        self.runtime = runtime

    def build_middleware_stack(self) -> ASGIApp:
        headers = {
            HEADER_SERVER_ID: self.runtime.server_id,
            HEADER_APP_VERSION: self.runtime.settings.version,
        }
        drained = self.runtime.drain.wrap(super().build_middleware_stack())
        identified = ServerHeadersMiddleware(drained, headers)
        return TrustedProxyMiddleware(identified, self.runtime.settings.forwarded_allow_ips)


def create_app(settings: Settings) -> WebApp:
    return WebApp(Runtime(settings))
