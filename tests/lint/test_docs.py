"""docs/lint.md cannot drift: every rule's bad example fires it and its good example is clean."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokenfuse.lint import config
from tokenfuse.lint.config import Settings
from tokenfuse.lint.engine import lint_source
from tokenfuse.lint.rules import RULES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "lint.md").read_text(encoding="utf-8")


def _examples(code: str) -> dict[str, str]:
    section = re.search(rf"^### {code}\n(.*?)(?=^### |^## )", DOC, re.S | re.M)
    assert section, f"docs/lint.md has no section for {code}"
    blocks = re.findall(r"\*\*(Bad|Good)\*\*\s*```python\n(.*?)```", section.group(1), re.S)
    return {kind.lower(): text for kind, text in blocks}


@pytest.mark.parametrize("code", sorted(RULES))
def test_rule_examples(code: str) -> None:
    examples = _examples(code)
    assert set(examples) == {"bad", "good"}
    bad = {f.rule for f in lint_source(examples["bad"], f"{code}_bad.py", Settings())}
    assert code in bad
    good = lint_source(examples["good"], f"{code}_good.py", Settings())
    assert good == []


def test_every_setting_is_documented() -> None:
    for key in config._KEYS:
        assert re.search(rf"^{re.escape(key)} = ", DOC, re.M), f"{key} is not in the docs' example table"
