"""What the analyzer's walk records for the checks that run after it (TF004, wrappers)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass(slots=True)
class RawFinding:
    rule: str
    node: ast.AST
    message: str
    # Lines on which a `# tokenfuse: ignore` comment suppresses this finding.
    first_line: int
    last_line: int


@dataclass(slots=True)
class Loop:
    """A loop that may not end: a `while`, or a `for` over itertools.count()."""

    node: ast.While | ast.For | ast.AsyncFor
    model_calls: list[tuple[ast.Call, str]] = field(default_factory=list)
    local_calls: list[tuple[str, ast.Call]] = field(default_factory=list)
    counters: set[str] = field(default_factory=set)
    ifs: list[tuple[ast.If, bool]] = field(default_factory=list)
    guarded: bool = False
    inner_depth: int = 0


@dataclass(slots=True)
class Forward:
    """A model call whose limit may arrive through the enclosing function's **kwargs."""

    call: ast.Call
    rule: str
    limits: tuple[str, ...]
    label: str


@dataclass(slots=True)
class Function:
    """A function or method; `name` is `Class.method` for methods."""

    name: str
    node: ast.FunctionDef | ast.AsyncFunctionDef
    params: set[str]
    kwargs_param: str | None
    model_calls: list[tuple[ast.Call, str]] = field(default_factory=list)
    local_calls: list[tuple[str, ast.Call]] = field(default_factory=list)
    ifs: list[ast.If] = field(default_factory=list)
    guarded: bool = False
    forwards: list[Forward] = field(default_factory=list)
