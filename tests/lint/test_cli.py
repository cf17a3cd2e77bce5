"""The `tokenfuse lint` command: exit codes, formats, options, configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenfuse import cli as top
from tokenfuse.lint import cli

UNBOUNDED = """\
from openai import OpenAI

client = OpenAI()
resp = client.chat.completions.create(model="gpt-4o", messages=[])
"""
BIG = """\
from openai import OpenAI

client = OpenAI()
resp = client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=50_000)
"""
HIDDEN = """\
from openai import OpenAI

client = OpenAI()


def complete(**kw):
    return client.chat.completions.create(model="gpt-4o", messages=[], **kw)
"""


def _project(tmp_path: Path, files: dict[str, str], config: str | None = None) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if config is not None:
        (tmp_path / "pyproject.toml").write_text(config)
    return tmp_path


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, {"bad.py": UNBOUNDED, "ok.py": "print('hi')\n"})
    assert cli.main([str(tmp_path / "ok.py")]) == 0
    assert cli.main([str(tmp_path / "bad.py")]) == 1
    assert cli.main([str(tmp_path / "nope.py")]) == 2
    assert "nope.py: no such file or directory" in capsys.readouterr().err
    assert cli.main([str(tmp_path), "--select", "TF999"]) == 2
    assert "unknown rule 'TF999'" in capsys.readouterr().err
    assert cli.main([str(tmp_path), "--max-tokens-ceiling", "-3"]) == 2
    assert cli.main([str(tmp_path), "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "invalid choice" in err


def test_text_format_is_path_line_col_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, {"bad.py": UNBOUNDED})
    cli.main([str(tmp_path / "bad.py")])
    out = capsys.readouterr().out.strip()
    assert out.startswith(
        f"{tmp_path / 'bad.py'}:4:8: TF001 client.chat.completions.create() has no output-token"
    )


def test_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, {"bad.py": UNBOUNDED, "big.py": BIG})
    assert cli.main([str(tmp_path), "--format", "json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(Path(r["path"]).name, r["line"], r["col"], r["rule"]) for r in rows] == [
        ("bad.py", 4, 8, "TF001"),
        ("big.py", 4, 79, "TF005"),
    ]
    assert all(set(r) == {"path", "line", "col", "rule", "message"} for r in rows)


def test_select_ignore_and_ceiling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, {"bad.py": UNBOUNDED, "big.py": BIG})
    assert cli.main([str(tmp_path), "--select", "TF005", "--format", "json"]) == 1
    assert [r["rule"] for r in json.loads(capsys.readouterr().out)] == ["TF005"]
    assert cli.main([str(tmp_path), "--ignore", "TF001,TF005"]) == 0
    capsys.readouterr()
    assert cli.main([str(tmp_path / "big.py"), "--max-tokens-ceiling", "64000"]) == 0


def test_strict_reports_what_it_cannot_see(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, {"hidden.py": HIDDEN})
    assert cli.main([str(tmp_path)]) == 0
    assert cli.main([str(tmp_path), "--strict"]) == 1
    assert "**kw, which tokenfuse cannot see" in capsys.readouterr().out


def test_pyproject_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = """\
[project]
name = "demo"

[tool.tokenfuse.lint]
max-tokens-ceiling = 64000
strict = true
extend-exclude = ["generated"]
per-file-ignores = { "scripts/*" = ["TF001"] }
"""
    _project(
        tmp_path,
        {
            "app/big.py": BIG,
            "app/hidden.py": HIDDEN,
            "generated/x.py": UNBOUNDED,
            "scripts/once.py": UNBOUNDED,
        },
        config,
    )
    assert cli.main([str(tmp_path), "--format", "json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(Path(r["path"]).name, r["rule"]) for r in rows] == [("hidden.py", "TF001")]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('max-tokens-ceiling = "32000"', "max-tokens-ceiling must be a positive integer without quotes"),
        ("selekt = ['TF001']", "unknown key 'selekt'"),
        ("ignore = ['TF123']", "unknown rule 'TF123'"),
        ("strict = 'yes'", "strict must be true or false"),
    ],
)
def test_bad_configuration_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, expected: str
) -> None:
    _project(tmp_path, {"a.py": UNBOUNDED}, f"[tool.tokenfuse.lint]\n{table}\n")
    assert cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(tmp_path / "pyproject.toml") in err[0] and expected in err[0]


def test_unparseable_file_is_reported_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, {"broken.py": "def f(:\n", "bad.py": UNBOUNDED})
    assert cli.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "broken.py:1: cannot parse, not linted" in err


def test_suppression_comment(tmp_path: Path) -> None:
    _project(
        tmp_path, {"a.py": UNBOUNDED.replace("messages=[])", "messages=[])  # tokenfuse: ignore[TF001]")}
    )
    assert cli.main([str(tmp_path)]) == 0
    _project(
        tmp_path, {"a.py": UNBOUNDED.replace("messages=[])", "messages=[])  # tokenfuse: ignore[TF004]")}
    )
    assert cli.main([str(tmp_path)]) == 1


def test_dispatcher_and_module_entry_point(tmp_path: Path) -> None:
    _project(tmp_path, {"bad.py": UNBOUNDED})
    assert top.main(["lint", str(tmp_path / "bad.py"), "--format", "json"]) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "tokenfuse", "lint", str(tmp_path), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)[0]["rule"] == "TF001"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "TF004" in out and "--strict" in out
