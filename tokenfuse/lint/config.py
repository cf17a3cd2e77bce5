"""Lint settings: defaults, `[tool.tokenfuse.lint]` in pyproject.toml, then the command line."""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tokenfuse.lint.rules import ALL_CODES, DEFAULT_MAX_TOKENS_CEILING

DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".git",
    ".hg",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    "__pycache__",
    "node_modules",
    "build",
    "dist",
    "site-packages",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)


class ConfigError(Exception):
    """A user error in configuration or arguments; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    select: frozenset[str] = ALL_CODES
    ignore: frozenset[str] = frozenset()
    max_tokens_ceiling: int = DEFAULT_MAX_TOKENS_CEILING
    strict: bool = False
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, frozenset[str]], ...] = field(default_factory=tuple)
    # Patterns in exclude and per-file-ignores are relative to this directory
    # (the one holding pyproject.toml); empty means the working directory.
    root: str = ""

    @property
    def enabled(self) -> frozenset[str]:
        return self.select - self.ignore

    def relative(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root or os.getcwd())
        return rel.replace(os.sep, "/")

    def excluded(self, path: str, base: str | None = None) -> bool:
        """Whether a pattern matches the path (relative to root) or one of its components.

        Components are taken below `base` when given (the directory being walked),
        so linting a directory that itself sits under `build/` still works.
        """
        rel_path = self.relative(path)
        below = rel_path if base is None else os.path.relpath(path, base).replace(os.sep, "/")
        parts = below.split("/")
        for pattern in self.exclude:
            if fnmatch.fnmatch(rel_path, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts):
                return True
        return False

    def ignored_in(self, path: str) -> frozenset[str]:
        if not self.per_file_ignores:
            return frozenset()
        rel_path = self.relative(path)
        out: set[str] = set()
        for pattern, codes in self.per_file_ignores:
            if fnmatch.fnmatch(rel_path, pattern):
                out |= codes
        return frozenset(out)


def parse_codes(values: list[str] | str, where: str) -> frozenset[str]:
    """Rule codes from a list or comma-separated string; ALL and prefixes like TF00 expand."""
    items = values.split(",") if isinstance(values, str) else values
    codes: set[str] = set()
    for raw in items:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: rule codes must be strings, got {raw!r}")
        code = raw.strip().upper()
        if not code:
            continue
        if code == "ALL":
            codes |= ALL_CODES
            continue
        matched = {c for c in ALL_CODES if c.startswith(code)}
        if not matched:
            known = ", ".join(sorted(ALL_CODES))
            raise ConfigError(f"{where}: unknown rule {raw.strip()!r}; known rules are {known}")
        codes |= matched
    return frozenset(codes)


def find_pyproject(start: Path) -> Path | None:
    here = start.resolve()
    if here.is_file():
        here = here.parent
    for candidate in (here, *here.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            return path
    return None


_KEYS = ("select", "ignore", "max-tokens-ceiling", "strict", "exclude", "extend-exclude", "per-file-ignores")


def load(pyproject: Path) -> Settings:
    """Settings from `[tool.tokenfuse.lint]`; defaults when the table is absent."""
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"{pyproject}: cannot read it as TOML ({exc}); fix the file or pass --config"
        ) from exc
    table = data.get("tool", {}).get("tokenfuse", {}).get("lint")
    root = str(pyproject.resolve().parent)
    if table is None:
        return Settings(exclude=DEFAULT_EXCLUDE, root=root)
    where = f"{pyproject} [tool.tokenfuse.lint]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    return replace(from_table(table, where), root=root)


def from_table(table: dict[str, Any], where: str) -> Settings:
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(_KEYS)}")
    settings = Settings(exclude=DEFAULT_EXCLUDE)
    if "select" in table:
        settings = replace(settings, select=parse_codes(_str_list(table, "select", where), f"{where} select"))
    if "ignore" in table:
        settings = replace(settings, ignore=parse_codes(_str_list(table, "ignore", where), f"{where} ignore"))
    if "max-tokens-ceiling" in table:
        value = table["max-tokens-ceiling"]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(
                f"{where}: max-tokens-ceiling must be a positive integer without quotes, got {value!r}"
            )
        settings = replace(settings, max_tokens_ceiling=value)
    if "strict" in table:
        value = table["strict"]
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: strict must be true or false without quotes, got {value!r}")
        settings = replace(settings, strict=value)
    if "exclude" in table:
        settings = replace(settings, exclude=tuple(_str_list(table, "exclude", where)))
    if "extend-exclude" in table:
        settings = replace(
            settings, exclude=settings.exclude + tuple(_str_list(table, "extend-exclude", where))
        )
    if "per-file-ignores" in table:
        pfi = table["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise ConfigError(f'{where}: per-file-ignores must be a table like {{"tests/*" = ["TF001"]}}')
        pairs = tuple(
            (
                pattern,
                parse_codes(
                    _as_list(codes, f"{where} per-file-ignores.{pattern}"), f"{where} per-file-ignores"
                ),
            )
            for pattern, codes in pfi.items()
        )
        settings = replace(settings, per_file_ignores=pairs)
    return settings


def _str_list(table: dict[str, Any], key: str, where: str) -> list[str]:
    return _as_list(table[key], f"{where} {key}")


def _as_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{where}: must be a list of strings, e.g. ["TF001"]')
    return value
