"""Demo web app served behind nginx: HTTP endpoints, a WebSocket feed and a graceful drain.

Replace it with your own application. What the deploy relies on:

* ``GET /healthz`` answers 200 while the process serves and 503 once it drains;
* on SIGTERM the process tells every WebSocket client to reconnect (close code 1012),
  waits for those sockets to finish, then lets in-flight HTTP requests complete and exits 0.

Run it with ``python -m webapp`` from the directory above this package. Configuration comes
from environment variables, read and validated at startup (see ``settings``): ``APP_VERSION``,
``HOST``, ``PORT``, ``DRAIN_TIMEOUT``, ``DRAIN_SPREAD``, ``TICK_INTERVAL``, ``APP_FAULT``,
``WS_MAX_MESSAGE``, ``UNIX_SOCKET_DIR``, ``FORWARDED_ALLOW_IPS`` and ``LIMIT_CONCURRENCY``, and
``DRAIN_REFUSE_NEW_SOCKETS`` (read by the drain helper: 1 answers a WebSocket that connects while
draining with 503, for a proxy to retry elsewhere). An empty value counts as unset.

Modules: ``settings`` (environment), ``faults`` (APP_FAULT), ``protocol`` (WebSocket messages),
``runtime`` (process identity and its drain), ``routes`` (endpoints), ``edge`` (header middleware),
``app`` (the Starlette app), ``serve`` (sockets, uvicorn settings, ``main``) and
``handover_asgi``, the drain on SIGTERM: a byte-for-byte copy of ``handover/asgi.py`` (the image
is built from ``server/`` alone; a unit test keeps the copies identical).
"""

from __future__ import annotations

import os

from .app import WebApp, create_app
from .settings import ConfigError, Settings

__all__ = ["ConfigError", "Settings", "WebApp", "create_app"]


def __getattr__(name: str) -> WebApp:
    """Build ``app`` from the environment on first use (e.g. ``uvicorn webapp:app``).

    Importing the package never fails on bad configuration; reading ``app`` does.
    """
    if name == "app":
        application = create_app(Settings.from_env(os.environ))
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
