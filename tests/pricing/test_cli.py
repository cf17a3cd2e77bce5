from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenfuse import cli as dispatcher
from tokenfuse.pricing.cli import main


def test_table_lists_every_model_with_all_five_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("model"))
    for column in ("input", "output", "cache read", "cache write 5m", "cache write 1h"):
        assert column in header
    kimi = next(line for line in out.splitlines() if line.startswith("moonshotai.kimi-k2.5 "))
    assert kimi.split()[1:3] == ["0.6", "3"]
    sonnet = next(line for line in out.splitlines() if line.startswith("claude-sonnet-4-5 "))
    assert sonnet.split()[1:6] == ["3", "15", "0.3", "3.75", "6"]


def test_json_table_uses_decimal_strings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["models"]["gpt-4o-mini"]["input"] == "0.15"
    assert doc["models"]["gpt-4o-mini"]["cache_write"] is None
    assert doc["models"]["amazon.nova-micro-v1:0"]["cache_read"] == "0.00875"


def test_one_model_shows_how_it_resolved(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["us.anthropic.claude-sonnet-4-5-20250929-v1:0"]) == 0
    out = capsys.readouterr().out
    assert "priced as  claude-sonnet-4-5" in out
    assert "'us.'" in out and "+10%" in out
    assert "3.3" in out and "16.5" in out


def test_one_model_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eu.anthropic.claude-opus-4-6-v1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "claude-opus-4-6"
    assert doc["inference_profile"] == "eu"
    assert doc["regional_premium"] == "0.1"
    assert doc["prices"] == {
        "input": "5.5",
        "output": "27.5",
        "cache_read": "0.55",
        "cache_write": "6.875",
        "cache_write_1h": "11",
    }


def test_unknown_model_exits_1_with_close_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["claude-sonet-4-5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "claude-sonnet-4-5" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_config_adds_overrides_and_litellm_file(
    tmp_path: Path, litellm_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tokenfuse.yaml"
    config.write_text(
        "prices:\n"
        "  test-model: {input: 1.00, output: 10.00, cache_read: 0.10, cache_write: 1.25, cache_write_1h: 2.00}\n"
        f"pricing: {{file: {json.dumps(litellm_file)}}}\n",
        encoding="utf-8",
    )
    assert main(["test-model", "--json", "--config", str(config)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["from"] == "config"
    assert doc["prices"] == {
        "input": "1",
        "output": "10",
        "cache_read": "0.1",
        "cache_write": "1.25",
        "cache_write_1h": "2",
    }
    assert main(["litellm-only-model", "--config", str(config)]) == 0
    assert "litellm" in capsys.readouterr().out
    assert main(["--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert any(line.startswith("test-model ") and line.endswith("config") for line in table.splitlines())


def test_without_config_test_model_is_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-model"]) == 1
    capsys.readouterr()


def test_bad_config_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tokenfuse.yaml"
    config.write_text("prices:\n  my-model: {input: lots, output: 1}\n", encoding="utf-8")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "my-model" in err and "Traceback" not in err


def test_missing_litellm_file_in_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tokenfuse.yaml"
    config.write_text(f"pricing: {{file: {json.dumps(str(tmp_path / 'gone.json'))}}}\n", encoding="utf-8")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "gone.json" in err and "no such file" in err


def test_dispatcher_routes_prices(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatcher.main(["prices", "moonshotai.kimi-k2.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prices"]["output"] == "3"


def test_long_context_tier_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["claude-sonnet-4-5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prices"]["long_context"]["above_input_tokens"] == 200_000
    assert doc["prices"]["long_context"]["output"] == "22.5"
    assert main(["claude-sonnet-4-5"]) == 0
    assert "above 200,000 input tokens" in capsys.readouterr().out


def test_issue_example_config_prices_test_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "issue-example.yaml"
    if not fixture.exists():
        pytest.skip("tests/fixtures/issue-example.yaml is not present")
    for var in ("TF_KEY_ALICE", "TF_KEY_BOB", "TF_AWS_SECRET_ALICE"):
        monkeypatch.setenv(var, f"value-of-{var.lower()}")
    assert main(["test-model", "--json", "--config", str(fixture)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["from"] == "config"
    assert doc["prices"]["cache_write_1h"] == "2"
