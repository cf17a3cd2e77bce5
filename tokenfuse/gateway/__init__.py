"""The metering gateway: the ASGI app (``app.Gateway``), its routes, caller
identity and upstreams, and ``tokenfuse serve``."""
