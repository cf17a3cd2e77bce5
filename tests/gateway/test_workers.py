"""`server.workers: N`: several gateway processes behind one port, sharing Redis counters."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ALICE, make_config
from tests.gateway.replicas import Replica
from tests.gateway.test_counter_store_loss import PrivateRedis, private_redis  # noqa: F401  (fixture)
from tokenfuse.config import ConfigError, parse_config
from tokenfuse.simulator.server import SimulatorThread


def test_memory_counters_with_several_workers_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("server: {workers: 2}\n")
    message = str(err.value)
    assert "server.workers" in message and "memory counters" in message and "redis://" in message
    assert parse_config("server: {workers: 2}\ncounters: redis://127.0.0.1:6379/0\n").server.workers == 2
    assert parse_config("server: {workers: 1}\n").server.workers == 1


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        yield s


@pytest.mark.socket
def test_two_workers_share_one_port_and_one_cap(
    sim: SimulatorThread, tmp_path: Path, private_redis: PrivateRedis  # noqa: F811
) -> None:
    db = tmp_path / "ledger.db"
    cfg = make_config(sim.url, db, counters=private_redis.url).model_dump(mode="json", exclude={"source"})
    cfg["server"].update(workers=2, admin_token="tf-admin-token-workers-test")
    cfg["budgets"] = [{"name": "ten", "match": {"principal": "alice"}, "window": "day", "limit": {"requests": 10}}]
    replica = Replica(cfg, tmp_path, "workers").start()
    try:
        statuses, ids = [], set()
        for i in range(20):
            # A new connection each time: the kernel spreads connections, not requests.
            with httpx.Client(timeout=10) as client:
                r = client.post(
                    f"{replica.url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {ALICE}"},
                    json={"model": "test-model", "max_tokens": 16, "messages": [{"role": "user", "content": f"{i}"}]},
                )
            statuses.append(r.status_code)
            ids.add(r.headers["x-tokenfuse-request-id"].rsplit("-", 1)[0])
        # One cap across both processes: memory counters would have admitted 10 per worker.
        assert statuses.count(200) == 10, statuses
        # Request ids carry a per-process prefix: both workers answered.
        assert len(ids) == 2, ids
    finally:
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGTERM)
        assert replica.proc.wait(timeout=30) == 0, replica.log.read_text()[-3000:]
    with sqlite3.connect(db) as conn:
        outcomes = dict(conn.execute("SELECT outcome, count(*) FROM requests GROUP BY outcome").fetchall())
    assert outcomes == {"ok": 10, "refused": 10}
