from __future__ import annotations

import pytest

from tokenfuse.simulator.state import ConfigError, Served, ServedLog, SimConfig
from tokenfuse.usage import Usage


def test_updated_validates_each_setting() -> None:
    config = SimConfig()
    assert config.updated({"output_tokens": 3, "fault": "break"}).output_tokens == 3
    assert config.output_tokens == 64  # the original is untouched
    for bad in (
        {"nope": 1},
        {"latency_ms": -1},
        {"output_tokens": "5"},
        {"fault": "boom"},
        {"chunk_tokens": 0},
    ):
        with pytest.raises(ConfigError):
            config.updated(bad)


def test_fault_count_runs_out() -> None:
    config = SimConfig().updated({"fault": "429", "fault_count": 2})
    assert [config.take_fault() for _ in range(3)] == ["429", "429", None]
    forever = SimConfig().updated({"fault": "hang"})
    assert [forever.take_fault() for _ in range(3)] == ["hang"] * 3
    assert SimConfig().take_fault() is None


def served(model: str, output: int) -> Served:
    return Served(
        "openai",
        "chat.completions",
        model,
        False,
        "bearer",
        Usage(input_uncached=2, output=output),
        200,
        True,
    )


def test_log_keeps_recent_records_but_totals_everything() -> None:
    log = ServedLog(keep=2)
    for model, output in (("a", 1), ("b", 2), ("a", 3)):
        log.add(served(model, output))
    data = log.as_dict()
    assert [r["model"] for r in data["requests"]] == ["b", "a"]
    assert data["totals"]["a"] == {
        "input_uncached": 4,
        "cache_read": 0,
        "cache_write": 0,
        "cache_write_1h": 0,
        "output": 4,
    }
    assert data["count"] == 3
    assert log.total().output == 6
    log.clear()
    assert log.as_dict()["requests"] == [] and log.totals() == {}


def test_totals_do_not_alias_a_records_usage() -> None:
    log = ServedLog()
    record = log.add(served("a", 1))
    record.usage.output = 99
    assert log.totals()["a"]["output"] == 1


def test_misbehaviour_settings_are_validated() -> None:
    config = SimConfig()
    assert (config.bill_abandoned, config.overrun_factor, config.server_tool_tokens) == (False, 1, 0)
    assert config.json_duplicates == "last"
    changed = config.updated(
        {"bill_abandoned": True, "overrun_factor": 3, "server_tool_tokens": 500, "json_duplicates": "first"}
    )
    assert changed.as_dict()["bill_abandoned"] is True and changed.overrun_factor == 3
    for bad in (
        {"bill_abandoned": 1},
        {"bill_abandoned": "yes"},
        {"overrun_factor": 0},
        {"overrun_factor": 2.5},
        {"server_tool_tokens": -1},
        {"json_duplicates": "middle"},
    ):
        with pytest.raises(ConfigError):
            config.updated(bad)


def test_record_says_when_it_was_billed_after_a_disconnect() -> None:
    record = served("a", 5)
    assert record.as_dict()["billed_after_disconnect"] is False
    record.billed_after_disconnect = True
    record.server_tool_uses = 2
    assert record.as_dict()["billed_after_disconnect"] is True
    assert record.as_dict()["server_tool_uses"] == 2
