"""The config model: the issue's example loads unchanged, errors name file/key/fix, docs cover every key."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from tokenfuse.config import (
    BudgetConfig,
    Config,
    ConfigError,
    RollingWindow,
    load_config,
    parse_config,
    parse_duration,
    substitute_env,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "fixtures" / "issue-example.yaml"
ENV = {"TF_KEY_ALICE": "alice-secret", "TF_KEY_BOB": "bob-secret", "TF_AWS_SECRET_ALICE": "aws-secret"}


def test_issue_example_loads_unchanged() -> None:
    cfg = load_config(EXAMPLE, env=ENV)
    assert [u.name for u in cfg.upstreams] == ["openai", "anthropic", "bedrock"]
    assert cfg.upstreams[0].api_key == "sk-none"  # ${OPENAI_API_KEY:-sk-none} with the variable unset
    assert cfg.upstreams[2].auth == "none" and cfg.upstreams[0].auth == "bearer"
    assert cfg.prices["test-model"].cache_write_1h == Decimal("2.00")
    assert cfg.budgets[0].limit.usd == Decimal(200)
    assert cfg.budgets[2].limit.tokens == {"input_uncached": 5_000_000}
    assert cfg.sessions.max_usd == Decimal(25) and cfg.sessions.max_requests == 200
    assert cfg.keys[0].aws_secret_access_key == "aws-secret"


def test_prices_are_exact_decimals_not_floats() -> None:
    cfg = parse_config("prices: {m: {input: 0.1, output: 0.3}}")
    assert cfg.prices["m"].input == Decimal("0.1")


def test_env_substitution_rules() -> None:
    assert substitute_env("${A}-${B:-dflt}-${C:-x}", {"A": "1", "C": ""}) == "1-dflt-x"
    assert substitute_env("${MISSING}", {}) == ""


def test_missing_env_secret_error_names_file_key_and_fix() -> None:
    env = {k: v for k, v in ENV.items() if k != "TF_KEY_BOB"}
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, env=env)
    msg = str(err.value)
    assert str(EXAMPLE) in msg and "keys[1] (name: bob-batch)" in msg and "export it" in msg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("server: {port: eighty}", "server.port"),
        ("server: {prot: 1}", "server.prot: unknown key"),
        ("budgets: [{name: b, limit: {}}]", "a limit needs at least one of usd, requests or tokens"),
        ("budgets: [{name: b, window: {rolling: 3q}, limit: {usd: 1}}]", "is not a duration"),
        ("budgets: [{name: b, limit: {tokens: {inputs: 5}}}]", "unknown token class 'inputs'"),
        ("budgets: [{name: b, limit: {usd: -1}}]", "non-negative"),
        ("store: mysql://x", "store must be sqlite"),
        ("counters: memcached://x", "counters must be `memory` or a redis URL"),
        ("upstreams: [{name: b, protocol: bedrock, base_url: 'http://x'}]", "needs `region`"),
        ("upstreams: [{name: o, protocol: openai, base_url: 'ftp://x'}]", "must start with http"),
        ("keys: [{name: a, key: s, principal: p}, {name: b, key: s, principal: q}]", "same secret"),
        ("keys: [{name: a, key_sha256: abc, principal: p}]", "64 hex"),
        ("defaults: {max_tokens: 9, max_tokens_cap: 8}", "must not exceed"),
        ("- just a list", "top level must be a mapping"),
        ("server: {host: [unclosed", "not valid YAML"),
    ],
)
def test_errors_name_the_key_and_the_fix(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "f.yaml")
    assert str(err.value).startswith("f.yaml")
    assert fragment in str(err.value)


def test_missing_file_and_rolling_window_shorthand(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    b = BudgetConfig.model_validate({"name": "r", "window": "rolling: 30d", "limit": {"usd": 1}})
    assert isinstance(b.window, RollingWindow) and b.rolling_seconds == 30 * 86400
    assert parse_duration("90s") == 90 and parse_duration("2w") == 1209600


def test_session_caps_precedence() -> None:
    cfg = parse_config(
        "sessions: {max_requests: 10, workflows: {batch: {max_requests: 99}}}\n"
        "keys: [{name: a, key: s, principal: p, workflow: batch, sessions: {max_requests: 3}},"
        " {name: b, key: t, principal: p, workflow: batch}, {name: c, key: u, principal: p}]"
    )
    a, b, c = cfg.keys
    assert cfg.session_caps(a, a.workflow).max_requests == 3
    assert cfg.session_caps(b, b.workflow).max_requests == 99
    assert cfg.session_caps(c, c.workflow).max_requests == 10


def _documented_keys(model: type[BaseModel], seen: set[str]) -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        keys.add(field.alias or name)  # the key as written in YAML (`from`, not `from_`)
        ann = field.annotation
        for sub in getattr(ann, "__args__", (ann,)):
            inner = getattr(sub, "__args__", (sub,))
            for cls in inner:
                if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__name__ not in seen:
                    seen.add(cls.__name__)
                    keys |= _documented_keys(cls, seen)
    return keys


def test_every_setting_is_documented() -> None:
    doc = re.sub(r"```.*?```", "", (ROOT / "docs" / "configuration.md").read_text(), flags=re.S)
    # A key counts as documented when it appears as an identifier inside a code span.
    documented = {w for span in re.findall(r"`([^`]+)`", doc) for w in re.findall(r"[a-z_0-9]+", span)}
    missing = sorted(k for k in _documented_keys(Config, set()) if k not in documented)
    assert not missing, f"document these keys in docs/configuration.md: {missing}"


def test_read_only_commands_skip_keys_whose_secrets_are_unset() -> None:
    env = {k: v for k, v in ENV.items() if k != "TF_KEY_BOB"}
    cfg = load_config(EXAMPLE, env=env, secrets=False)
    assert [k.name for k in cfg.keys] == ["alice-droid"]
    assert cfg.store == "sqlite:///tokenfuse.db"


def test_every_config_error_is_reported_in_one_pass() -> None:
    from tokenfuse.config import ConfigError, parse_config

    text = """
upstreams:
  - {name: a, protocol: openai, base_url: http://x}
  - {name: a, protocol: openai, base_url: http://y}
  - {name: b, protocol: nope, base_url: http://z}
keys:
  - {name: k1, key: s1, principal: alice}
  - {name: k2, key: s1, principal: bob}
  - {name: k2, key: s3, principal: carol, team: "has space"}
budgets:
  - {name: t, limit: {usd: 1}}
  - {name: t, match: {principal: []}, limit: {usd: 1}}
defaults: {max_tokens: 9, max_tokens_cap: 5}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.yaml")
    msg = str(err.value)
    for part in (
        "upstreams[2] (name: b).protocol", "two upstreams are named 'a'", "keys[1] (name: k2): has the same secret",
        "two keys are named 'k2'", "team 'has space'", "two budgets are named 't'", "an empty list matches nothing",
        "defaults.max_tokens",
    ):
        assert part in msg, (part, msg)
    assert all(line.startswith("t.yaml: ") for line in msg.splitlines())


def test_match_fields_take_lists_and_keys_carry_team_and_tags() -> None:
    from tokenfuse.config import parse_config

    cfg = parse_config(
        "keys: [{name: k, key: s, principal: alice, team: platform, tags: [b, a, b], expires: 2030-01-31}]\n"
        "budgets: [{name: t, match: {principal: [alice, bob], model: ['*opus*'], tags: nightly}, limit: {usd: 1}}]\n"
    )
    key = cfg.keys[0]
    assert (key.team, key.tags, key.expires.isoformat()) == ("platform", ["a", "b"], "2030-01-31T00:00:00+00:00")
    m = cfg.budgets[0].match
    assert (m.values("principal"), m.values("model"), m.values("tags"), m.values("team")) == (
        ("alice", "bob"), ("*opus*",), ("nightly",), None
    )
