"""Run a gateway in a background thread: for the demo and for tests that drive
it over real sockets with the official SDKs."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from tokenfuse.config import Config


class GatewayThread:
    def __init__(self, config: Config, host: str = "127.0.0.1", port: int = 0) -> None:
        from tokenfuse.gateway.serve import build_server

        self.config = config
        self.server: Any = build_server(config, host, port)
        self._thread = threading.Thread(target=self.server.run, name="tokenfuse-gateway", daemon=True)
        self.host = host
        self.port = port

    @property
    def gateway(self) -> Any:
        return self.server.config.app

    @property
    def url(self) -> str:
        scheme = "https" if self.config.server.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> GatewayThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start; see the log above")
            time.sleep(0.01)
        sock = self.server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]
        return self

    def flush(self, timeout: float = 10.0, idle_s: float = 2.0) -> bool:
        """Commit the rows of every request answered so far.

        A row is written just after its response is sent, so a client can see
        its answer before the row exists: wait (up to ``idle_s``, since a caller
        may hold a request open on purpose) for requests in progress, then flush.
        """
        deadline = time.monotonic() + idle_s
        while self.gateway.active and time.monotonic() < deadline:
            time.sleep(0.005)
        return bool(self.gateway.ledger.flush(timeout))

    def stop(self) -> None:
        self.server.should_exit = True
        # uvicorn cancels what is still running at server.shutdown_timeout_s, then flushes the ledger.
        self._thread.join(timeout=self.config.server.shutdown_timeout_s + 20)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
