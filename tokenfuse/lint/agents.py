"""TF004 and wrapper call sites: judged once the walk has summarised every function and loop.

Whether a loop calls a model can depend on functions defined after it, so the
analyzer records loops and functions during its single pass and this module
decides, from those summaries alone, which loops and recursions nothing bounds
and which calls to a **kwargs-forwarding wrapper leave the limit out.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

from tokenfuse.lint import loops
from tokenfuse.lint.summary import Forward, Function, Loop, RawFinding


def judge(
    functions: list[Function],
    all_loops: list[Loop],
    module_calls: list[tuple[str, ast.Call]],
    *,
    ceiling: int,
    int_value: Callable[[ast.expr], int | None],
) -> list[RawFinding]:
    return _Judge(functions, all_loops, module_calls, ceiling, int_value).run()


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


class _Judge:
    def __init__(
        self,
        functions: list[Function],
        all_loops: list[Loop],
        module_calls: list[tuple[str, ast.Call]],
        ceiling: int,
        int_value: Callable[[ast.expr], int | None],
    ) -> None:
        self.functions = functions
        self.all_loops = all_loops
        self.module_calls = module_calls
        self.ceiling = ceiling
        # Resolves constants; after the walk only module-level names are in scope.
        self._int_value = int_value
        self.findings: list[RawFinding] = []

    def _report(self, rule: str, node: ast.AST, message: str, *, whole: bool = True) -> None:
        first = getattr(node, "lineno", 1)
        last = getattr(node, "end_lineno", first) if whole else first
        self.findings.append(RawFinding(rule, node, message, first, last or first))

    def run(self) -> list[RawFinding]:
        by_name: dict[str, list[Function]] = {}
        for fn in self.functions:
            by_name.setdefault(fn.name, []).append(fn)
        calls_model: dict[str, tuple[ast.Call, str]] = {}
        for fn in self.functions:
            if fn.model_calls and fn.name not in calls_model:
                calls_model[fn.name] = fn.model_calls[0]
        changed = True
        while changed:
            changed = False
            for fn in self.functions:
                if fn.name in calls_model:
                    continue
                for name, call in fn.local_calls:
                    if name in calls_model and name != fn.name:
                        calls_model[fn.name] = (call, f"{name}()")
                        changed = True
                        break
        for loop in self.all_loops:
            self._judge_loop(loop, calls_model)
        for fn in self.functions:
            self._judge_recursion(fn, calls_model, by_name)
        self._judge_forwards(by_name)
        return self.findings

    @staticmethod
    def _loop_trigger(
        model_calls: list[tuple[ast.Call, str]],
        local_calls: list[tuple[str, ast.Call]],
        calls_model: dict[str, tuple[ast.Call, str]],
        exclude: str | None = None,
    ) -> str | None:
        if model_calls:
            call, label = model_calls[0]
            return f"calls a model ({label} at line {call.lineno})"
        for name, call in local_calls:
            if name in calls_model and name != exclude:
                return f"calls {name}() at line {call.lineno}, which calls a model"
        return None

    def _judge_loop(self, loop: Loop, calls_model: dict[str, tuple[ast.Call, str]]) -> None:
        trigger = self._loop_trigger(loop.model_calls, loop.local_calls, calls_model)
        if trigger is None or loop.guarded:
            return
        node = loop.node
        if isinstance(node, ast.While):
            if loops.condition_bounds(node.test, loop.counters):
                return
            head = f"`while {loops.describe_condition(node.test)}` loop"
            cond = "its condition has no iteration counter or budget"
        else:
            head = f"`for ... in {loops.describe_condition(node.iter)}` loop"
            cond = "it iterates forever"
        if any(loops.guard_exits(if_node, loop.counters, nested=nested) for if_node, nested in loop.ifs):
            return
        self._report(
            "TF004",
            node,
            f"{head} {trigger}, {cond}, and no break/return/raise is guarded by a step counter "
            "or budget check; count iterations and stop at a max-steps limit",
            whole=False,
        )

    def _judge_recursion(
        self,
        fn: Function,
        calls_model: dict[str, tuple[ast.Call, str]],
        by_name: dict[str, list[Function]],
    ) -> None:
        direct = next((call for name, call in fn.local_calls if name == fn.name), None)
        if direct is not None:
            cycle = [fn]
            how = f"recurses (line {direct.lineno})"
            trigger = self._loop_trigger(fn.model_calls, fn.local_calls, calls_model, exclude=fn.name)
        elif fn.model_calls:
            # Mutual recursion: only reported at members that call the model themselves.
            found = self._cycle_through(fn, by_name)
            if found is None:
                return
            cycle, via = found
            how = f"recurses through {via[0]}() (line {via[1].lineno})"
            trigger = self._loop_trigger(fn.model_calls, [], calls_model)
        else:
            return
        if trigger is None:
            return
        for member in cycle:
            if member.guarded or any(
                self._returns_on_bound(if_node, member.params) for if_node in member.ifs
            ):
                return
        self._report(
            "TF004",
            fn.node,
            f"{fn.name}() {how} and {trigger}, with no depth or budget "
            "check that returns or raises; pass a depth and stop at a limit",
            whole=False,
        )

    @staticmethod
    def _returns_on_bound(node: ast.If, params: set[str]) -> bool:
        return loops.condition_bounds(node.test, params, negation_ok=True) and any(
            isinstance(sub, ast.Return | ast.Raise) for stmt in node.body for sub in ast.walk(stmt)
        )

    @staticmethod
    def _cycle_through(
        fn: Function, by_name: dict[str, list[Function]]
    ) -> tuple[list[Function], tuple[str, ast.Call]] | None:
        """Functions on a call cycle back to `fn` (other than a direct self-call), and its first hop."""
        for first, call in fn.local_calls:
            if first == fn.name or first not in by_name:
                continue
            seen = {first}
            stack = [first]
            while stack:
                name = stack.pop()
                for member in by_name.get(name, ()):
                    for callee, _ in member.local_calls:
                        if callee == fn.name:
                            cycle = [fn, *(f for n in seen for f in by_name.get(n, ()))]
                            return cycle, (first, call)
                        if callee not in seen and callee in by_name:
                            seen.add(callee)
                            stack.append(callee)
        return None

    def _judge_forwards(self, by_name: dict[str, list[Function]]) -> None:
        sites: list[tuple[str, ast.Call]] = list(self.module_calls)
        for fn in self.functions:
            sites.extend(fn.local_calls)
        for name, call in sites:
            for fn in by_name.get(name, ()):
                for fwd in fn.forwards:
                    self._judge_forward_site(fn, fwd, call)

    def _judge_forward_site(self, fn: Function, fwd: Forward, site: ast.Call) -> None:
        if fn.node.lineno <= site.lineno <= (fn.node.end_lineno or fn.node.lineno):
            return
        for kw in site.keywords:
            if kw.arg in fwd.limits:
                if _is_none(kw.value):
                    break
                # Only module-level names are still in scope after the walk.
                number = self._int_value(kw.value)
                if number is not None and number > self.ceiling:
                    self._report(
                        "TF005",
                        kw.value,
                        f"{fn.name}() passes {kw.arg}={number:,} on to {fwd.label}(), "
                        f"above the ceiling of {self.ceiling:,}",
                    )
                return
            if kw.arg is None and not isinstance(kw.value, ast.Dict):
                return  # cannot see what is unpacked here; --strict already reported the inner call
            if kw.arg is None and isinstance(kw.value, ast.Dict):
                keys = {k.value for k in kw.value.keys if isinstance(k, ast.Constant)}
                if keys & set(fwd.limits) or None in kw.value.keys:
                    return
        self._report(
            fwd.rule,
            site,
            f"{fn.name}() forwards **{fn.kwargs_param} to {fwd.label}() (line {fwd.call.lineno}) "
            f"and this call passes no {' or '.join(fwd.limits)}; pass {fwd.limits[0]}=N",
        )
