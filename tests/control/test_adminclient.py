"""The CLI's admin client: addresses and a real call against a real gateway's admin API."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.conftest import make_config
from tokenfuse.control.adminclient import admin_call, gateway_url
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread


def test_gateway_url_maps_wildcard_binds_to_loopback(tmp_path: Path) -> None:
    cfg = make_config("http://127.0.0.1:1", tmp_path / "l.db")
    assert gateway_url(cfg).startswith("http://127.0.0.1:")
    wild = cfg.model_copy(update={"server": cfg.server.model_copy(update={"host": "::", "port": 8787})})
    assert gateway_url(wild) == "http://[::1]:8787"
    v4 = cfg.model_copy(update={"server": cfg.server.model_copy(update={"host": "0.0.0.0", "port": 1})})
    assert gateway_url(v4) == "http://127.0.0.1:1"
    assert gateway_url(cfg, "https://gw.example:9/") == "https://gw.example:9"


def test_admin_call_returns_error_statuses_instead_of_raising(tmp_path: Path) -> None:
    with SimulatorThread() as sim, GatewayThread(make_config(sim.url, tmp_path / "l.db")) as gw:
        status, payload = admin_call(gw.url, "admin-secret", "/kills")
        assert status == 200 and "kill_switches" in payload
        status, payload = admin_call(gw.url, "wrong", "/kills")
        assert status in (401, 403) and payload
        status, payload = admin_call(gw.url, "admin-secret", "/kills", "POST", {"scope": "model", "value": "x"})
        assert status in (200, 201, 202), payload
