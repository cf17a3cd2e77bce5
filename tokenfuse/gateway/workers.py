"""Several gateway processes behind one port (``server.workers: N``).

Each worker is a whole gateway — its own event loop, ledger writer, admission
journal, guards and prefix bounds — listening on its own ``SO_REUSEPORT``
socket, so the kernel spreads connections across them without a shared accept
queue. What must be shared is shared through the store and the counters: kill
switches, run-time keys and budgets live in the store; budget counters must be
Redis (config validation refuses memory counters with more than one worker,
since each process would enforce every cap on its own).

The supervisor only forks, forwards signals and replaces a worker that dies:
SIGTERM/SIGINT stop every worker gracefully, SIGHUP makes every worker reload
its config. A worker that dies is replaced; its journal, unlocked by its death,
is recovered as 'incomplete' rows by the next gateway that starts on the store.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

from tokenfuse.config import Config, ConfigError

log = logging.getLogger("tokenfuse.gateway")

# A worker that dies sooner than this after starting failed to start: stop, do not respawn in a loop.
MIN_UPTIME_S = 5.0


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) in the port's SO_REUSEPORT group; not listening yet."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def _worker(config: Config, host: str, port: int) -> int:
    """In the forked child: one gateway on its own listening socket."""
    from tokenfuse.gateway.serve import build_server

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # uvicorn and GatewayServer install their own
    sock = reuseport_socket(host, port)
    try:
        server = build_server(config, host, port)
    except ConfigError as exc:  # checks that need the price book and upstreams, as in `serve`
        print(f"tokenfuse serve: {exc}", file=sys.stderr)
        return 2
    server.run(sockets=[sock])
    return 0 if server.started else 1


def run(config: Config, host: str | None = None, port: int | None = None) -> int:
    """Fork ``config.server.workers`` gateways on one port and supervise them; the exit status."""
    if not hasattr(socket, "SO_REUSEPORT"):
        print("tokenfuse serve: server.workers > 1 needs SO_REUSEPORT (Linux, BSD, macOS); use workers: 1",
              file=sys.stderr)
        return 2
    host = host or config.server.host
    # Bound but never listening: it holds the port (and resolves port 0) for the group,
    # and the kernel hands connections only to the workers' listening sockets.
    holder = reuseport_socket(host, config.server.port if port is None else port)
    port = holder.getsockname()[1]
    n = config.server.workers
    workers: dict[int, float] = {}  # pid -> start time
    stopping = False
    status = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                holder.close()
                code = _worker(config, host, port)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("gateway worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = time.monotonic()

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            signum = signal.SIGTERM  # a second SIGINT would make uvicorn skip its graceful shutdown
        for pid in list(workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for _ in range(n):
        spawn()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("tokenfuse: %d worker processes on %s:%d (pids %s)", n, host, port, " ".join(map(str, workers)))
    while workers:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        started = workers.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                status = 1
            continue
        if time.monotonic() - started < MIN_UPTIME_S:
            log.error("gateway worker %d exited with status %d while starting; stopping the others", pid, code)
            status = status or (code if code > 0 else 1)
            forward(signal.SIGTERM, None)
            continue
        log.error("gateway worker %d exited with status %d; starting a new one", pid, code)
        spawn()
    holder.close()
    return status
