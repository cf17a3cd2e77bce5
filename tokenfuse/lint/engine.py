"""Run the analyzer over files: discovery, suppression comments, rule selection."""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tokenfuse.lint.analyzer import Analyzer
from tokenfuse.lint.config import Settings
from tokenfuse.lint.rules import ALL_CODES, Finding

_SUPPRESS = re.compile(r"#\s*tokenfuse:\s*ignore(?:\[([A-Za-z0-9,\s]*)\])?")
# Below this many bytes in total (~250,000 lines) files are linted in-process:
# on the benchmark, worker start-up and result pickling cost more than they save.
_PARALLEL_MIN_BYTES = 8_000_000


@dataclass(slots=True)
class Result:
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    files: int = 0


def suppressions(source: str) -> dict[int, frozenset[str] | None]:
    """Line number -> codes suppressed there (None: every rule)."""
    out: dict[int, frozenset[str] | None] = {}
    if "tokenfuse:" not in source:
        return out
    for match in _SUPPRESS.finditer(source):
        line = source.count("\n", 0, match.start()) + 1
        codes = match.group(1)
        out[line] = (
            None if codes is None else frozenset(c.strip().upper() for c in codes.split(",") if c.strip())
        )
    return out


def _column(source_lines: list[str] | None, line: int, col_offset: int) -> int:
    # ast columns are UTF-8 byte offsets; editors and SARIF count characters.
    if source_lines is None or line > len(source_lines):
        return col_offset + 1
    text = source_lines[line - 1]
    return len(text.encode("utf-8")[:col_offset].decode("utf-8", "replace")) + 1


def lint_source(source: str, path: str, settings: Settings) -> list[Finding]:
    """Findings for one module's source. Raises SyntaxError when it does not parse."""
    enabled = settings.enabled - settings.ignored_in(path)
    if not enabled:
        return []
    tree = ast.parse(source, filename=path)
    analyzer = Analyzer(ceiling=settings.max_tokens_ceiling, strict=settings.strict)
    analyzer.visit(tree)
    raw = analyzer.finish()
    if not raw:
        return []
    suppressed = suppressions(source)
    lines = None if source.isascii() else source.splitlines()
    findings: set[Finding] = set()
    for item in raw:
        if item.rule not in enabled:
            continue
        hidden = False
        for line in {item.first_line, item.last_line}:
            if line in suppressed:
                codes = suppressed[line]
                if codes is None or item.rule in codes:
                    hidden = True
        if hidden:
            continue
        lineno = getattr(item.node, "lineno", 1)
        col = _column(lines, lineno, getattr(item.node, "col_offset", 0))
        findings.add(Finding(path, lineno, col, item.rule, item.message))
    return sorted(findings)


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = str(path)
    return Path(rel).as_posix() if not rel.startswith("..") else path.as_posix()


def iter_files(paths: list[Path], settings: Settings) -> Iterator[str]:
    """Python files under the given paths, in a stable order, minus excluded ones."""
    seen: set[str] = set()
    for root in paths:
        if root.is_file():
            shown = _display(root)
            if shown not in seen and not settings.excluded(shown):
                seen.add(shown)
                yield shown
            continue
        base = str(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not settings.excluded(os.path.join(dirpath, d), base))
            for name in sorted(filenames):
                if not name.endswith((".py", ".pyi")):
                    continue
                shown = _display(Path(dirpath, name))
                if shown not in seen and not settings.excluded(os.path.join(dirpath, name), base):
                    seen.add(shown)
                    yield shown


def lint_file(path: str, settings: Settings) -> tuple[list[Finding], str | None]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        # Honour a PEP 263 coding declaration (and a UTF-8 BOM) as the interpreter would.
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        source = data.decode(encoding)
    except (OSError, UnicodeDecodeError, SyntaxError, LookupError) as exc:
        return [], f"{path}: cannot read ({exc})"
    try:
        return lint_source(source, path, settings), None
    except SyntaxError as exc:
        return [], f"{path}:{exc.lineno or 0}: cannot parse, not linted ({exc.msg})"
    except RecursionError:
        return [], f"{path}: nested too deeply to parse, not linted"


def _lint_batch(batch: list[str], settings: Settings) -> list[tuple[list[Finding], str | None]]:
    return [lint_file(p, settings) for p in batch]


def lint_paths(paths: list[Path], settings: Settings, *, jobs: int | None = None) -> Result:
    files = list(iter_files(paths, settings))
    result = Result(files=len(files))
    if jobs is None:
        workers = min(os.cpu_count() or 1, 8)
        parallel = workers > 1 and len(files) > 1 and sum(_size(p) for p in files) >= _PARALLEL_MIN_BYTES
    else:
        workers = jobs
        parallel = jobs > 1 and len(files) > 1
    if parallel:
        batches = [files[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outcomes = [o for chunk in pool.map(_lint_batch, batches, [settings] * workers) for o in chunk]
    else:
        outcomes = [lint_file(p, settings) for p in files]
    for findings, error in outcomes:
        result.findings.extend(findings)
        if error is not None:
            result.errors.append(error)
    result.findings.sort()
    return result


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


__all__ = ["ALL_CODES", "Result", "lint_file", "lint_paths", "lint_source", "suppressions"]
