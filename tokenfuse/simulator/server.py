"""Running the simulator: in a background thread (tests, the demo) or in the
foreground (``tokenfuse simulate``), always under uvicorn with httptools."""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType

import uvicorn

from tokenfuse.simulator.app import Simulator
from tokenfuse.simulator.state import SimConfig

_BROKEN_ON_PURPOSE = "ASGI callable returned without completing response"


class _QuietBreaks(logging.Filter):
    """A simulated break returns mid-response on purpose; uvicorn logs each
    one as an application error, which would bury real errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_BROKEN_ON_PURPOSE)


def quiet_simulated_breaks() -> None:
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietBreaks) for f in log.filters):
        log.addFilter(_QuietBreaks())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so the port is known (and port 0 resolved) before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Simulator, *, in_thread: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="asyncio" if in_thread else "uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
        # Hold the keep-alive longer than clients' pools do, so a pooled
        # connection is never closed under a request being written.
        timeout_keep_alive=75,
    )


class SimulatorThread:
    """``with SimulatorThread() as sim:`` serves the simulator on loopback in a
    daemon thread; ``sim.url``, ``sim.port`` and ``sim.app`` (the in-process
    Simulator, for its ``served`` record and ``config``) are ready inside."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimConfig | None = None,
        app: Simulator | None = None,
    ) -> None:
        self.host = host
        self.app = app or Simulator(config)
        self._sock = bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn_config(self.app, in_thread=True))
        self._thread = threading.Thread(target=self._run, name=f"simulator:{self.port}", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start(), not lost in the thread
            self._error = exc

    def start(self) -> SimulatorThread:
        quiet_simulated_breaks()
        self._thread.start()
        while not self._server.started:
            self._thread.join(0.005)
            if not self._thread.is_alive():
                raise RuntimeError(f"simulator failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, line: str) -> None:
        super().__init__(config)
        self._line = line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._line, flush=True)


def serve_forever(sock: socket.socket, app: Simulator, announce: str) -> None:
    """Serve until SIGINT/SIGTERM, printing ``announce`` once ready."""
    quiet_simulated_breaks()
    server = _AnnouncingServer(uvicorn_config(app, in_thread=False), announce)
    server.run(sockets=[sock])
