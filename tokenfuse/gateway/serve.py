"""`tokenfuse serve`: run the gateway under uvicorn (httptools + uvloop)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from tokenfuse.config import Config, ConfigError, load_config


def build_server(config: Config, host: str | None = None, port: int | None = None) -> Any:
    import uvicorn

    from tokenfuse.gateway.app import Gateway

    tls = config.server.tls
    uv_config = uvicorn.Config(
        Gateway(config),
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=config.server.log_level,
        timeout_keep_alive=75,
        backlog=4096,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        server_header=False,
        date_header=False,
    )
    return uvicorn.Server(uv_config)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenfuse serve", description="Run the metering gateway.")
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
    server = build_server(config, args.host, args.port)
    server.run()
    return 0 if server.started else 1
