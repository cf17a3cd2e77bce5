"""Processes for the gateway benchmark: simulator, gateway, LiteLLM proxy, and what they cost.

Each runs as its own process, optionally pinned to a CPU with ``taskset``, the
way a user starts it. Nothing here measures latency; see gateway_load.py.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Also the LiteLLM proxy's master key, so both proxies authenticate the same header.
KEY = "sk-tfbench-5f0c2a9e81d34b7c9a6e0f1d2c3b4a5968778695a4b3c2d1"
PROMPT = (
    "You are reviewing a pull request in a large Python repository. Summarise the change below, list any "
    "bugs you see and suggest one test that would have caught each. "
) * 4


@dataclass(frozen=True)
class Shape:
    """One kind of request: its path, body, headers and a text every good answer holds."""

    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    expect: str


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def shapes(max_tokens: int = 64) -> dict[str, Shape]:
    auth = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    chat = {"model": "test-model", "max_tokens": max_tokens, "messages": [{"role": "user", "content": PROMPT}]}
    return {
        "openai": Shape("openai", "/v1/chat/completions", _json(chat), auth, '"usage"'),
        # No stream_options: the SDK default. The gateway then asks upstream for the usage chunk itself.
        "openai-stream": Shape(
            "openai-stream", "/v1/chat/completions", _json({**chat, "stream": True}), auth, "[DONE]"
        ),
        "anthropic": Shape(
            "anthropic",
            "/v1/messages",
            _json({"model": "test-claude", "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": PROMPT}]}),
            {"content-type": "application/json", "x-api-key": KEY, "anthropic-version": "2023-06-01"},
            '"usage"',
        ),
        "bedrock": Shape(
            "bedrock",
            "/model/test-claude/converse",
            _json({"messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                   "inferenceConfig": {"maxTokens": max_tokens}}),
            auth,
            '"usage"',
        ),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    if cpus is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", cpus, *argv]


def post_once(port: int, shape: Shape, timeout: float = 5.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", shape.path, body=shape.body, headers=shape.headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_ready(port: int, shape: Shape, proc: subprocess.Popen[bytes], timeout: float, poll_s: float) -> float:
    """Seconds until ``shape`` is answered with a 200; the clock is the caller's start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before it answered")
        try:
            if post_once(port, shape) == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f} s")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    ready_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _spawn(
    name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """``root`` is the checkout whose ``tokenfuse`` runs (another worktree measures an older commit)."""
    out = log.open("wb")
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(root) + os.pathsep + full_env.get("PYTHONPATH", "")
    # cwd too: `python -m` puts the working directory first on sys.path.
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=root)


def start_simulator(workdir: Path, cpus: str | None) -> Proc:
    port = free_port()
    log = workdir / "simulator.log"
    argv = pinned(cpus, [PY, "-m", "tokenfuse", "simulate", "--host", "127.0.0.1", "--port", str(port)])
    popen = _spawn("simulator", argv, log)
    proc = Proc("simulator", popen, port, log)
    wait_ready(port, shapes()["openai"], popen, 30.0, 0.02)
    return proc


def gateway_config(
    sim_url: str, db: Path, counters: str = "memory", budgets: int = 0, server_extra: str = ""
) -> str:
    lines = [
        f"server: {{host: 127.0.0.1, port: 0, log_level: warning{server_extra}}}",
        f"store: sqlite:///{db}",
        f"counters: {counters}",
        "upstreams:",
        f'  - {{name: openai, protocol: openai, base_url: "{sim_url}/v1", api_key: sk-bench-upstream}}',
        f'  - {{name: anthropic, protocol: anthropic, base_url: "{sim_url}", api_key: bench-upstream}}',
        f'  - {{name: bedrock, protocol: bedrock, base_url: "{sim_url}", region: us-east-1,',
        "     aws_access_key_id: AKIABENCHUPSTREAM000, aws_secret_access_key: bench-upstream-secret}",
        "keys:",
        f"  - {{name: bench, key: {KEY}, principal: alice, workflow: bench}}",
        "prices:",
        "  test-model: {input: 1.00, output: 10.00, cache_read: 0.10, cache_write: 1.25}",
        "  test-claude: {input: 3.00, output: 15.00, cache_read: 0.30, cache_write: 3.75, cache_write_1h: 6.00}",
        "defaults: {max_tokens: 256, max_tokens_cap: 32000}",
    ]
    # Every budget matches every bench request, each on a different dimension and window,
    # with limits no run can reach: the cost measured is the bookkeeping, never a refusal.
    pool = [
        "{name: b-principal, match: {principal: alice}, window: month, limit: {usd: 1000000000}}",
        "{name: b-workflow, match: {workflow: bench}, window: day, limit: {requests: 1000000000000}}",
        "{name: b-key, match: {key: bench}, window: hour, limit: {tokens: {total: 1000000000000000}}}",
        '{name: b-model, match: {model: "test-*"}, window: {rolling: 1h}, limit: {usd: 1000000000}}',
        "{name: b-all, window: total, limit: {usd: 1000000000, requests: 1000000000000}}",
    ]
    if budgets:
        lines.append("budgets:")
        lines += [f"  - {b}" for b in pool[:budgets]]
    return "\n".join(lines) + "\n"


def start_gateway(config_text: str, workdir: Path, tag: str, cpus: str | None, root: Path = ROOT) -> Proc:
    port = free_port()
    cfg = workdir / f"gateway-{tag}.yaml"
    cfg.write_text(config_text)
    log = workdir / f"gateway-{tag}.log"
    argv = pinned(cpus, [PY, "-m", "tokenfuse", "serve", "--config", str(cfg), "--port", str(port)])
    t0 = time.monotonic()
    popen = _spawn("gateway", argv, log, root=root)
    proc = Proc(f"gateway-{tag}", popen, port, log)
    try:
        proc.ready_s = wait_ready(port, shapes()["openai"], popen, 30.0, 0.002) - t0
    except RuntimeError as exc:
        proc.stop()
        raise RuntimeError(f"gateway {tag}: {exc}; see {log}") from None
    return proc


LITELLM_VENV = ROOT / "bench" / ".venv-litellm"


def litellm_binary() -> Path | None:
    exe = LITELLM_VENV / "bin" / "litellm"
    return exe if exe.exists() else None


def start_litellm(sim_url: str, workdir: Path, cpus: str | None) -> Proc:
    exe = litellm_binary()
    if exe is None:
        raise RuntimeError(f"{LITELLM_VENV} has no litellm; see bench/README.md to install it")
    port = free_port()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: test-model\n"
        "    litellm_params:\n"
        "      model: openai/test-model\n"
        f"      api_base: {sim_url}/v1\n"
        "      api_key: sk-bench-upstream\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  drop_params: true\n"
    )
    log = workdir / "litellm.log"
    env = {
        # Offline: use the price map bundled in the package, never fetch one.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        "LITELLM_MASTER_KEY": KEY,
    }
    argv = pinned(cpus, [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                         "--num_workers", "1"])
    t0 = time.monotonic()
    popen = _spawn("litellm", argv, log, env)
    proc = Proc("litellm", popen, port, log)
    try:
        proc.ready_s = wait_ready(port, shapes()["openai"], popen, 180.0, 0.05) - t0
    except RuntimeError as exc:
        proc.stop()
        raise RuntimeError(f"litellm: {exc}; see {log}") from None
    return proc


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    except OSError:
        pass
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (taskset execs, so the pid is the server)."""
    total_kib = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
        except OSError:
            pass
    return total_kib / 1024


@dataclass
class RssSampler:
    pid: int
    interval_s: float = 0.1
    peak_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.peak_mib = max(self.peak_mib, rss_mib(self.pid))

        self.peak_mib = rss_mib(self.pid)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mib = max(self.peak_mib, rss_mib(self.pid))
