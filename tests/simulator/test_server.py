from __future__ import annotations

import socket

import httpx
import pytest

from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.simulator.state import SimConfig


def test_thread_serves_its_config_and_stops() -> None:
    with SimulatorThread(config=SimConfig(output_tokens=5)) as sim:
        assert sim.url == f"http://127.0.0.1:{sim.port}"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(sim.url + "/v1/chat/completions", json=body, timeout=5).json()
        assert answer["usage"]["completion_tokens"] == 5
        assert sim.app.served.count == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url + "/_sim/health", timeout=2)


def test_busy_port_fails_at_construction() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(OSError):
            SimulatorThread(port=busy.getsockname()[1])
