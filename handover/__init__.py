"""handover: zero-downtime deploys of an HTTP + WebSocket Python app on plain Docker hosts.

One engine, two front doors: every step takes anything with ``.run()`` (an Invoke ``Context`` for
the local stack, a Fabric ``Connection`` for a remote host).
"""

__version__ = "0.1.0"
