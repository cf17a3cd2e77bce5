"""TF004's heuristic: does something bound this loop (or recursion)?

A loop counts as bounded when
  * its condition compares an iteration counter (a name the loop body
    increments or decrements), a budget-like name (max_steps, deadline,
    remaining_budget, ...), `len(...)` or a clock reading (`time.monotonic()`); in an `and` one such conjunct is
    enough, in an `or` every disjunct needs one; or
  * its body has an `if` on such a comparison whose branch leaves the loop
    (`break` at the loop's own level, `return`, or `raise`); or
  * its body calls something named like a budget guard (`check_budget()`,
    `tracker.enforce_limit()`), which is taken to raise when exhausted.
A recursive function counts as bounded when an `if` comparing one of its
parameters (depth, attempt, remaining, ...) or a budget-like name returns or
raises.
"""

from __future__ import annotations

import ast
import re

BUDGET_NAME = re.compile(
    r"budget|max|limit|remaining|left|deadline|timeout|quota|spent|cost|allowance|attempt|retr|depth|"
    r"step|turn|iter|round|count|tries|tokens|elapsed|expire",
    re.IGNORECASE,
)
BUDGET_METHOD = re.compile(
    r"budget|quota|limit|allow|exceed|exhaust|within|remaining|afford|should_stop|can_continue", re.IGNORECASE
)
BUDGET_OBJECT = re.compile(r"budget|quota|limit|meter|tracker|guard", re.IGNORECASE)
GUARD_CALL = re.compile(r"budget|quota|limit|guard|enforce|charge", re.IGNORECASE)
# Comparing a clock reading (`time.monotonic() - t0 < 30`) bounds a loop in time.
_CLOCKS = frozenset({"monotonic", "monotonic_ns", "perf_counter", "time", "time_ns", "now", "utcnow"})
_ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)


def target_key(node: ast.expr) -> str | None:
    """`n` for a Name, `self.n` for an attribute of a Name: how counters are named."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _operand_is_bounding(node: ast.expr, counters: set[str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            if sub.id in counters or BUDGET_NAME.search(sub.id):
                return True
        elif isinstance(sub, ast.Attribute):
            key = target_key(sub)
            if (key is not None and key in counters) or BUDGET_NAME.search(sub.attr):
                return True
        elif isinstance(sub, ast.Call):
            name = call_name(sub)
            if name == "len" or name in _CLOCKS:
                return True
    return False


def compare_bounds(node: ast.Compare, counters: set[str]) -> bool:
    if not all(isinstance(op, _ORDERING) for op in node.ops):
        return False
    operands = [node.left, *node.comparators]
    if any(isinstance(o, ast.Constant) and isinstance(o.value, str) for o in operands):
        return False
    return any(_operand_is_bounding(o, counters) for o in operands)


def condition_bounds(test: ast.expr, counters: set[str], *, negation_ok: bool = False) -> bool:
    if isinstance(test, ast.BoolOp):
        parts = [condition_bounds(v, counters, negation_ok=negation_ok) for v in test.values]
        return any(parts) if isinstance(test.op, ast.And) else all(parts)
    if isinstance(test, ast.Compare):
        return compare_bounds(test, counters)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        # `while not done` is the classic unbounded loop; `if not budget.ok(): break` is a guard.
        return negation_ok and condition_bounds(test.operand, counters, negation_ok=True)
    if isinstance(test, ast.Name | ast.Attribute):
        key = target_key(test)
        return key is not None and key in counters
    if isinstance(test, ast.Call):
        return is_budget_check(test)
    return False


def is_budget_check(call: ast.Call) -> bool:
    """`budget.allows()`, `within_limit(x)`, `tracker.exhausted()`: a call that asks about a budget."""
    func = call.func
    if isinstance(func, ast.Name):
        return bool(BUDGET_METHOD.search(func.id))
    if isinstance(func, ast.Attribute):
        if BUDGET_METHOD.search(func.attr):
            return True
        receiver = func.value
        while isinstance(receiver, ast.Attribute):
            if BUDGET_OBJECT.search(receiver.attr):
                return True
            receiver = receiver.value
        return isinstance(receiver, ast.Name) and bool(BUDGET_OBJECT.search(receiver.id))
    return False


def call_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _leaves(stmts: list[ast.stmt], *, allow_break: bool) -> bool:
    """Whether these statements contain an exit from the enclosing loop or function."""
    for stmt in stmts:
        for sub in _walk_same_frame(stmt, allow_break=allow_break):
            if isinstance(sub, ast.Return | ast.Raise):
                return True
            if allow_break and isinstance(sub, ast.Break):
                return True
    return False


def _walk_same_frame(node: ast.AST, *, allow_break: bool) -> list[ast.AST]:
    out: list[ast.AST] = []
    stack: list[tuple[ast.AST, bool]] = [(node, allow_break)]
    while stack:
        cur, brk = stack.pop()
        if isinstance(cur, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(cur, ast.Break) and not brk:
            continue
        out.append(cur)
        inner_brk = brk and not isinstance(cur, ast.For | ast.AsyncFor | ast.While)
        stack.extend((child, inner_brk) for child in ast.iter_child_nodes(cur))
    return out


def guard_exits(node: ast.If, counters: set[str], *, nested: bool) -> bool:
    """An `if` that compares a counter/budget and leaves the loop on that branch."""
    if not condition_bounds(node.test, counters, negation_ok=True):
        return False
    return _leaves(node.body, allow_break=not nested)


def describe_condition(test: ast.expr) -> str:
    text = ast.unparse(test)
    return text if len(text) <= 40 else text[:37] + "..."
