"""Real `tokenfuse serve` processes for multi-replica tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Replica:
    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.config = json.loads(json.dumps(config))
        self.port = free_port()
        self.config.setdefault("server", {})["port"] = self.port
        self.path = workdir / f"{name}.yaml"
        self.path.write_text(json.dumps(self.config))  # JSON is valid YAML
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Replica:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tokenfuse", "serve", "--config", str(self.path)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica exited: {self.log.read_text()[-3000:]}")
            try:
                httpx.get(f"{self.url}/_tokenfuse/admin/status", timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"replica did not start: {self.log.read_text()[-3000:]}")

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        token = self.config["server"]["admin_token"]
        return httpx.request(
            method, f"{self.url}/_tokenfuse/admin{path}", json=body,
            headers={"authorization": f"Bearer {token}"}, timeout=5,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
