"""File discovery, suppression parsing and the worker-process path."""

from __future__ import annotations

from pathlib import Path

from tests.lint.corpus_eval import CORPUS
from tokenfuse.lint.config import DEFAULT_EXCLUDE, Settings
from tokenfuse.lint.engine import iter_files, lint_paths, suppressions


def test_suppressions_parse_codes_and_bare_form() -> None:
    src = "a()  # tokenfuse: ignore[TF001, tf005]\nb()\nc()  #tokenfuse:ignore\n"
    assert suppressions(src) == {1: frozenset({"TF001", "TF005"}), 3: None}
    assert suppressions("x = 1  # noqa\n") == {}


def test_iter_files_skips_default_excludes_and_non_python(tmp_path: Path) -> None:
    for rel in ("app/a.py", "app/b.pyi", "app/notes.txt", ".venv/lib/x.py", "app/__pycache__/a.py"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    settings = Settings(exclude=DEFAULT_EXCLUDE, root=str(tmp_path))
    found = sorted(Path(p).relative_to(tmp_path).as_posix() for p in iter_files([tmp_path], settings))
    assert found == ["app/a.py", "app/b.pyi"]
    # A file named twice is linted once.
    assert len(list(iter_files([tmp_path / "app/a.py", tmp_path / "app"], settings))) == 2


def test_worker_processes_give_the_same_findings() -> None:
    one = lint_paths([CORPUS], Settings(), jobs=1)
    two = lint_paths([CORPUS], Settings(), jobs=2)
    assert one.findings == two.findings and one.files == two.files
    assert len(one.findings) > 40


def test_a_directory_named_on_the_command_line_is_walked_even_under_an_excluded_name(tmp_path: Path) -> None:
    inside = tmp_path / "build" / "pkg"
    (inside / "dist").mkdir(parents=True)
    (inside / "a.py").write_text("x = 1\n")
    (inside / "dist" / "b.py").write_text("x = 1\n")
    settings = Settings(exclude=DEFAULT_EXCLUDE, root=str(tmp_path))
    assert [Path(p).name for p in iter_files([inside], settings)] == ["a.py"]
    assert list(iter_files([tmp_path], settings)) == []


def test_coding_declaration_is_honoured(tmp_path: Path) -> None:
    src = "# -*- coding: latin-1 -*-\nimport litellm\nname = 'caf\xe9'\nlitellm.completion(model='m', messages=[])\n"
    path = tmp_path / "latin.py"
    path.write_bytes(src.encode("latin-1"))
    result = lint_paths([path], Settings(), jobs=1)
    assert result.errors == []
    assert [(f.line, f.rule) for f in result.findings] == [(4, "TF003")]
