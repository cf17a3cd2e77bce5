"""`tokenfuse serve`: run the gateway under uvicorn (httptools + uvloop)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from tokenfuse.aio import spawn
from tokenfuse.config import Config, ConfigError, load_config
from tokenfuse.gateway import gctune

log = logging.getLogger("tokenfuse.gateway")


class GatewayServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM after a complete graceful shutdown exits 0.

    uvicorn re-raises the signal it caught once it has shut down, so the process
    would end "killed by SIGTERM" even though every request was answered or
    cancelled at the deadline and the ledger was flushed. SIGINT still re-raises.
    SIGHUP reloads the config file without a restart.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            gctune.enable()  # after the lifespan: what start-up built is frozen (gateway/gctune.py)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals(), self._reload_on_hangup():
            yield
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    @contextlib.contextmanager
    def _reload_on_hangup(self) -> Iterator[None]:
        """SIGHUP re-reads the config file (tokenfuse/gateway/reload.py); main thread only, as for every signal."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
            yield
            return
        loop = asyncio.get_running_loop()
        gateway: Any = self.config.app  # the Gateway that build_server passed in

        def hangup(signum: int, frame: object) -> None:
            # A signal handler must not run the reload itself: hand it to the event loop.
            loop.call_soon_threadsafe(lambda: spawn(gateway.reload()))

        previous = signal.signal(signal.SIGHUP, hangup)
        try:
            yield
        finally:
            signal.signal(signal.SIGHUP, previous)


def build_server(config: Config, host: str | None = None, port: int | None = None) -> GatewayServer:
    from tokenfuse.gateway.app import Gateway
    from tokenfuse.gateway.server_limits import ServerLimits, open_file_limit, open_file_warning, protocol_for
    from tokenfuse.logredact import install as install_log_redaction

    # Before anything logs: no secret reaches a log line at any level (docs/gateway.md).
    install_log_redaction(config)
    server = config.server
    open_files = open_file_limit()
    limits = ServerLimits.from_config(server, open_files)
    warning = open_file_warning(limits.max_connections, open_files)
    if warning:
        log.warning(warning)
    tls = server.tls
    uv_config = uvicorn.Config(
        Gateway(config),
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        loop="uvloop",
        http=protocol_for(limits),
        lifespan="on",
        access_log=False,
        log_level=config.server.log_level,
        timeout_keep_alive=server.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works; uvicorn hints int
        # The protocol refuses connections beyond max_connections when they are
        # accepted; uvicorn's own check (503 when headers arrive) then only catches
        # requests still running after their connection went, which count as tasks.
        limit_concurrency=limits.max_connections + 1,
        timeout_graceful_shutdown=server.shutdown_timeout_s,  # type: ignore[arg-type]
        backlog=4096,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        server_header=False,
        date_header=False,
    )
    return GatewayServer(uv_config)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenfuse serve",
        description="Run the metering gateway. SIGHUP (or `tokenfuse reload`) re-reads the config file without a "
        "restart.",
    )
    parser.add_argument("--config", "-c", default="tokenfuse.yaml", help="gateway config file (YAML)")
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tokenfuse serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if config.server.workers > 1:
        from tokenfuse.gateway.workers import run as run_workers

        return run_workers(config, args.host, args.port)
    try:
        server = build_server(config, args.host, args.port)
    except ConfigError as exc:  # checks that need the price book and upstreams, e.g. routing rules
        print(f"tokenfuse serve: {exc}", file=sys.stderr)
        return 2
    server.run()
    return 0 if server.started else 1
