"""The pre-commit hook manifest points at the real command and passes file names to it."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tokenfuse import cli as top

MANIFEST = Path(__file__).resolve().parents[2] / ".pre-commit-hooks.yaml"


def test_manifest_runs_the_lint_command(tmp_path: Path) -> None:
    hooks = yaml.safe_load(MANIFEST.read_text())
    (hook,) = hooks
    assert {"id", "name", "entry", "language"} <= set(hook)
    assert hook["language"] == "python" and hook["types"] == ["python"]
    argv = shlex.split(hook["entry"])
    assert argv[0] == "tokenfuse" and argv[1] in top.COMMANDS
    # pre-commit appends the staged file names to the entry.
    bad = tmp_path / "agent.py"
    bad.write_text("import litellm\nlitellm.completion(model='m', messages=[])\n")
    good = tmp_path / "util.py"
    good.write_text("def f():\n    return 1\n")
    assert top.main([*argv[1:], str(good)]) == 0
    assert top.main([*argv[1:], str(good), str(bad)]) == 1
