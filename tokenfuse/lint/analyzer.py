"""One pass over one module's AST: find LLM calls, their limits, and the loops around them.

The visitor walks the tree once in source order, tracking what names are bound
to (clients, dict literals, constants) per scope, so `client = OpenAI()` then
`client.chat.completions.create(...)` resolves without importing anything.
Per-call rules (TF001-TF003, TF005) are decided on the spot; TF004 needs to
know which local functions call a model, so loops and functions are
summarised during the walk and judged in `finish()`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenfuse.lint import agents, dicts, loops, sdk
from tokenfuse.lint.dicts import DictInfo, Presence
from tokenfuse.lint.summary import Forward, Function, Loop, RawFinding

_MAX_DEPTH = 8

# Nodes that never contain a call, a loop or a binding worth tracking: the walk
# skips them instead of dispatching, which is most of its cost on real code.
_SKIP: frozenset[type] = frozenset(
    {ast.Name, ast.Constant, ast.Load, ast.Store, ast.Del, ast.Pass, ast.Break, ast.Continue}
    | {ast.alias, ast.Global, ast.Nonlocal, ast.arguments, ast.arg}
    | set(ast.operator.__subclasses__())
    | set(ast.cmpop.__subclasses__())
    | set(ast.unaryop.__subclasses__())
    | set(ast.boolop.__subclasses__())
)


@dataclass(slots=True)
class Value:
    """What a name is bound to: a client kind when known, and the expression."""

    kind: str | None
    expr: ast.expr | None


_UNKNOWN = Value(None, None)


@dataclass(slots=True)
class _Scope:
    is_class: bool
    names: dict[str, Value] = field(default_factory=dict)
    added_keys: dict[str, set[dicts.Path]] = field(default_factory=dict)


@dataclass(slots=True)
class _Limit:
    state: Presence
    value: ast.expr | None = None
    param: str = ""
    hidden_by: str = ""
    forwarded: bool = False


def _label(call: ast.Call) -> str:
    text = ast.unparse(call.func)
    return text if len(text) <= 60 else "..." + text[-57:]


def _is_none(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


class Analyzer(ast.NodeVisitor):
    _dispatch: ClassVar[dict[type, Any]] = {}

    def visit(self, node: ast.AST) -> None:
        kind = type(node)
        if kind in _SKIP:
            return
        method: Callable[[Analyzer, ast.AST], None] | None = self._dispatch.get(kind)
        if method is None:
            method = getattr(type(self), f"visit_{kind.__name__}", type(self).generic_visit)
            self._dispatch[kind] = method
        method(self, node)

    def generic_visit(self, node: ast.AST) -> None:
        for name in node._fields:
            value = getattr(node, name, None)
            if type(value) is list:
                for item in value:
                    if isinstance(item, ast.AST) and type(item) not in _SKIP:
                        self.visit(item)
            elif isinstance(value, ast.AST) and type(value) not in _SKIP:
                self.visit(value)

    def __init__(self, *, ceiling: int, strict: bool) -> None:
        self.ceiling = ceiling
        self.strict = strict
        self.findings: list[RawFinding] = []
        self.imports: dict[str, str] = {}
        self.scopes: list[_Scope] = [_Scope(is_class=False)]
        self.classes: list[dict[str, Value]] = []
        self.class_names: list[str] = []
        self.func_returns: dict[str, str] = {}
        self.loops: list[Loop] = []
        self.all_loops: list[Loop] = []
        self.func: Function | None = None
        self.functions: list[Function] = []
        self.module_calls: list[tuple[str, ast.Call]] = []
        self.seen_openai = False
        self.seen_anthropic = False

    # ---- scopes and names -------------------------------------------------

    def _bind(self, name: str, value: Value) -> None:
        scope = self.scopes[-1]
        scope.names[name] = value
        scope.added_keys.pop(name, None)
        if scope.is_class and self.classes:
            self.classes[-1][name] = value

    def _lookup(self, name: str) -> tuple[Value, _Scope] | None:
        innermost = len(self.scopes) - 1
        for i in range(innermost, -1, -1):
            scope = self.scopes[i]
            if scope.is_class and i != innermost:
                continue
            found = scope.names.get(name)
            if found is not None:
                return found, scope
        return None

    def _qualname(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.imports.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _self_attr(self, node: ast.Attribute) -> Value | None:
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") and self.classes:
            return self.classes[-1].get(node.attr)
        return None

    # ---- what an expression is -------------------------------------------

    def _kind(self, node: ast.expr, depth: int = 0) -> str | None:
        if depth > _MAX_DEPTH:
            return None
        if isinstance(node, ast.Name):
            found = self._lookup(node.id)
            if found is not None:
                return found[0].kind
            module = self.imports.get(node.id)
            return {"openai": sdk.OPENAI, "anthropic": sdk.ANTHROPIC, "litellm": sdk.LITELLM}.get(
                module or ""
            )
        if isinstance(node, ast.Attribute):
            attr = self._self_attr(node)
            return attr.kind if attr is not None else None
        if isinstance(node, ast.Await):
            return self._kind(node.value, depth + 1)
        if isinstance(node, ast.Call):
            return self._call_kind(node, depth)
        return None

    def _call_kind(self, node: ast.Call, depth: int) -> str | None:
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr in sdk.CLIENT_DERIVE:
                inner = self._kind(func.value, depth + 1)
                if inner in (sdk.OPENAI, sdk.ANTHROPIC):
                    return inner
            if func.attr in sdk.LANGCHAIN_DERIVE and self._kind(func.value, depth + 1) == sdk.LANGCHAIN:
                return sdk.LANGCHAIN
            if func.attr == "client":
                service = self._service_name(node)
                if service is not None:
                    return sdk.BEDROCK if service == "bedrock-runtime" else sdk.AWS_OTHER
        qual = self._qualname(func)
        if qual is not None:
            return sdk.client_kind_of_class(qual)
        if isinstance(func, ast.Name):
            return self.func_returns.get(func.id)
        return None

    def _service_name(self, call: ast.Call) -> str | None:
        arg: ast.expr | None = call.args[0] if call.args else None
        for kw in call.keywords:
            if kw.arg == "service_name":
                arg = kw.value
        if arg is not None:
            arg = self._resolve_const(arg)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        return None

    def _annotation_kind(self, node: ast.expr | None) -> str | None:
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp):
            return self._annotation_kind(node.left) or self._annotation_kind(node.right)
        if isinstance(node, ast.Subscript):
            return self._annotation_kind(node.slice)
        if isinstance(node, ast.Tuple):
            for elt in node.elts:
                kind = self._annotation_kind(elt)
                if kind:
                    return kind
            return None
        qual = self._qualname(node)
        if qual is None and isinstance(node, ast.Name | ast.Attribute):
            bare = node.id if isinstance(node, ast.Name) else node.attr
            for module, names in (
                ("openai", sdk.OPENAI_CLIENTS),
                ("anthropic", sdk.ANTHROPIC_CLIENTS),
                ("langchain_openai", sdk.LANGCHAIN_MODELS),
            ):
                if bare in names:
                    qual = f"{module}.{bare}"
            if bare in sdk.BEDROCK_CLIENT_TYPES:
                qual = bare
        return sdk.client_kind_of_class(qual) if qual else None

    def _resolve_const(self, node: ast.expr, depth: int = 0) -> ast.expr:
        """Follow a name to the constant it was bound to, if it was."""
        while isinstance(node, ast.Name) and depth < _MAX_DEPTH:
            found = self._lookup(node.id)
            if found is None or found[0].expr is None:
                return node
            node = found[0].expr
            depth += 1
        return node

    def _int_value(self, node: ast.expr, depth: int = 0) -> int | None:
        if depth > _MAX_DEPTH:
            return None
        node = self._resolve_const(node)
        if isinstance(node, ast.Constant):
            value = node.value
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(node, ast.BinOp):
            left = self._int_value(node.left, depth + 1)
            right = self._int_value(node.right, depth + 1)
            if left is None or right is None:
                return None
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.FloorDiv) and right:
                return left // right
            if isinstance(node.op, ast.Pow) and 0 <= right <= 64:
                return int(left**right)
        return None

    def _dict_of(self, node: ast.expr, depth: int = 0) -> DictInfo | None:
        if depth > _MAX_DEPTH:
            return None

        def resolve(sub: ast.expr) -> DictInfo | None:
            return self._dict_of(sub, depth + 1)

        if isinstance(node, ast.Dict):
            return dicts.from_dict_literal(node, resolve)
        if isinstance(node, ast.Name):
            found = self._lookup(node.id)
            if found is None or found[0].expr is None:
                return None
            info = self._dict_of(found[0].expr, depth + 1)
            added = found[1].added_keys.get(node.id)
            if info is not None and added:
                info.added |= added
            return info
        if isinstance(node, ast.Attribute):
            attr = self._self_attr(node)
            return self._dict_of(attr.expr, depth + 1) if attr is not None and attr.expr is not None else None
        if isinstance(node, ast.Call):
            func = node.func
            qual = self._qualname(func)
            if qual in ("json.dumps", "orjson.dumps", "ujson.dumps", "simplejson.dumps") and node.args:
                return resolve(node.args[0])
            if isinstance(func, ast.Attribute) and func.attr in ("encode", "copy") and not node.args[1:]:
                return resolve(func.value)
            if isinstance(func, ast.Name) and func.id == "bytes" and node.args:
                return resolve(node.args[0])
            if isinstance(func, ast.Name) and func.id == "dict" and self._lookup("dict") is None:
                info = dicts.from_keywords(node.keywords, resolve)
                for arg in node.args:
                    dicts.merge_spread(info, resolve(arg))
                return info
        return None

    # ---- limit checks ----------------------------------------------------

    def _kwargs_limit(self, call: ast.Call, names: tuple[str, ...], nested: tuple[str, ...] = ()) -> _Limit:
        """Is one of `names` passed to `call`, directly, via **dict, or inside a nested params dict?"""
        hidden: list[str] = []
        forwarded = True
        for kw in call.keywords:
            if kw.arg in names:
                return _Limit("yes", kw.value, kw.arg)
        for kw in call.keywords:
            if kw.arg is None:
                info = self._dict_of(kw.value)
                if info is None:
                    hidden.append(f"**{ast.unparse(kw.value)}")
                    is_fwd = (
                        self.func is not None
                        and isinstance(kw.value, ast.Name)
                        and kw.value.id == self.func.kwargs_param
                    )
                    forwarded = forwarded and is_fwd
                    continue
                for name in names:
                    state, value = dicts.lookup(info, (name,), self._dict_of)
                    if state == "yes":
                        return _Limit("yes", value, name)
                    if state == "unknown":
                        hidden.append(f"**{ast.unparse(kw.value)}")
                        forwarded = False
            elif kw.arg in nested:
                info = self._dict_of(kw.value)
                if info is None:
                    hidden.append(f"{kw.arg}={ast.unparse(kw.value)}")
                    forwarded = False
                    continue
                for path in sdk.MODEL_KWARGS_LIMITS:
                    state, value = dicts.lookup(info, path, self._dict_of)
                    if state == "yes":
                        return _Limit("yes", value, f"{kw.arg}[{'.'.join(path)!r}]")
                    if state == "unknown":
                        hidden.append(kw.arg)
                        forwarded = False
        if any(isinstance(a, ast.Starred) for a in call.args):
            hidden.append("*args")
            forwarded = False
        if hidden:
            return _Limit("unknown", hidden_by=", ".join(dict.fromkeys(hidden)), forwarded=forwarded)
        return _Limit("no")

    def _report(self, rule: str, node: ast.AST, message: str, *, whole: bool = True) -> None:
        first = getattr(node, "lineno", 1)
        last = getattr(node, "end_lineno", first) if whole else first
        self.findings.append(RawFinding(rule, node, message, first, last or first))

    def _judge(
        self, call: ast.Call, rule: str, limit: _Limit, label: str, want: str, limits: tuple[str, ...]
    ) -> None:
        """Turn a limit lookup into findings for `rule` and TF005."""
        if limit.state == "yes":
            value = self._resolve_const(limit.value) if limit.value is not None else None
            if _is_none(value):
                self._report(
                    rule, call, f"{label}() sets {limit.param}=None, which leaves output unbounded; {want}"
                )
                return
            self._check_ceiling(limit.value, limit.param, label)
            return
        if limit.state == "no":
            self._report(rule, call, f"{label}() has no output-token limit; {want}")
            return
        if limit.forwarded and limits and self.func is not None:
            self.func.forwards.append(Forward(call, rule, limits, label))
        if self.strict:
            self._report(
                rule,
                call,
                f"{label}() may get its output-token limit through {limit.hidden_by}, "
                f"which tokenfuse cannot see (reported because of --strict); {want}",
            )

    def _check_ceiling(self, value: ast.expr | None, param: str, label: str) -> None:
        if value is None:
            return
        number = self._int_value(value)
        if number is not None and number > self.ceiling:
            self._report(
                "TF005",
                value,
                f"{label}() sets {param}={number:,}, above the ceiling of {self.ceiling:,}",
            )

    # ---- call classification --------------------------------------------

    @staticmethod
    def _chain(func: ast.expr) -> tuple[list[str], list[ast.expr]]:
        names: list[str] = []
        receivers: list[ast.expr] = []
        cur = func
        while True:
            if isinstance(cur, ast.Attribute):
                if cur.attr not in sdk.TRANSPARENT_ATTRS:
                    names.append(cur.attr)
                    receivers.append(cur.value)
                cur = cur.value
            elif (
                isinstance(cur, ast.Call)
                and isinstance(cur.func, ast.Attribute)
                and cur.func.attr in sdk.CLIENT_DERIVE
                and names
            ):
                cur = cur.func.value
            else:
                break
        names.reverse()
        receivers.reverse()
        return names, receivers

    def _model_call(self, call: ast.Call, label: str) -> None:
        for loop in self.loops:
            loop.model_calls.append((call, label))
        if self.func is not None:
            self.func.model_calls.append((call, label))

    def _classify(self, call: ast.Call) -> None:
        qual = self._qualname(call.func)
        if qual is not None:
            if qual in ("litellm.completion", "litellm.acompletion"):
                self._litellm(call, qual.rsplit(".", 1)[1])
                return
            if sdk.is_langchain_model(qual):
                self._langchain_ctor(call, qual.rsplit(".", 1)[1])
                return
        names, receivers = self._chain(call.func)
        if not names:
            return
        last = names[-1]
        n = len(names)
        if n >= 3 and names[-3] == "chat" and names[-2] == "completions" and last in sdk.OPENAI_CHAT_METHODS:
            kind = self._kind(receivers[-3])
            if kind in (None, sdk.OPENAI):
                label = _label(call)
                self._model_call(call, label)
                limit = self._kwargs_limit(call, sdk.OPENAI_CHAT_LIMITS, ("extra_body",))
                self._judge(
                    call, "TF001", limit, label, "pass max_completion_tokens=N", sdk.OPENAI_CHAT_LIMITS
                )
            return
        if n >= 2 and last in sdk.OPENAI_CHAT_METHODS and names[-2] in ("responses", "completions"):
            kind = self._kind(receivers[-2])
            # An unresolved receiver counts in a module that imports openai, or when the
            # call has the endpoint's own shape (model= plus input= / prompt=).
            shape = {"model", "input" if names[-2] == "responses" else "prompt"}
            has_shape = shape <= {kw.arg for kw in call.keywords}
            if kind == sdk.OPENAI or (kind is None and (self.seen_openai or has_shape)):
                label = _label(call)
                self._model_call(call, label)
                if names[-2] == "responses":
                    limits, want = sdk.OPENAI_RESPONSES_LIMITS, "pass max_output_tokens=N"
                else:
                    limits, want = sdk.OPENAI_COMPLETIONS_LIMITS, "pass max_tokens=N"
                self._judge(
                    call, "TF001", self._kwargs_limit(call, limits, ("extra_body",)), label, want, limits
                )
            return
        if n >= 2 and last == "create" and names[-2] in ("ChatCompletion", "Completion"):
            if self._kind(receivers[-2]) == sdk.OPENAI:
                label = _label(call)
                self._model_call(call, label)
                limits = sdk.OPENAI_COMPLETIONS_LIMITS
                self._judge(
                    call, "TF001", self._kwargs_limit(call, limits), label, "pass max_tokens=N", limits
                )
            return
        if n >= 2 and names[-2] == "messages" and last in sdk.OPENAI_CHAT_METHODS:
            kind = self._kind(receivers[-2])
            # Twilio and others also have `messages.create`; an unresolved receiver needs model=.
            has_model = any(kw.arg in ("model", None) for kw in call.keywords)
            if kind == sdk.ANTHROPIC or (kind is None and self.seen_anthropic and has_model):
                label = _label(call)
                self._model_call(call, label)
                # The Messages API requires max_tokens, so only its size is checked.
                limit = self._kwargs_limit(call, sdk.ANTHROPIC_LIMITS)
                if limit.state == "yes":
                    self._check_ceiling(limit.value, limit.param, label)
            return
        if last in sdk.BEDROCK_CONVERSE or last in sdk.BEDROCK_INVOKE:
            kind = self._kind(receivers[-1])
            has_model_id = any(kw.arg == "modelId" for kw in call.keywords)
            if kind == sdk.BEDROCK or (kind is None and has_model_id):
                if last in sdk.BEDROCK_CONVERSE:
                    self._bedrock_converse(call)
                else:
                    self._bedrock_invoke(call)
            return
        if last in sdk.LITELLM_FUNCTIONS and self._kind(receivers[-1]) in (sdk.LITELLM, sdk.LITELLM_ROUTER):
            self._litellm(call, last)
            return
        if last in sdk.LANGCHAIN_RUN and self._kind(receivers[-1]) == sdk.LANGCHAIN:
            self._model_call(call, _label(call))

    def _litellm(self, call: ast.Call, fn: str) -> None:
        label = _label(call)
        self._model_call(call, label)
        limit = self._kwargs_limit(call, sdk.LITELLM_LIMITS)
        self._judge(call, "TF003", limit, label, f"pass max_tokens=N to {fn}()", sdk.LITELLM_LIMITS)

    def _langchain_ctor(self, call: ast.Call, cls: str) -> None:
        label = _label(call)
        limit = self._kwargs_limit(call, sdk.LANGCHAIN_LIMITS, ("model_kwargs",))
        self._judge(call, "TF003", limit, label, f"pass max_tokens=N to {cls}(...)", sdk.LANGCHAIN_LIMITS)

    def _bedrock_converse(self, call: ast.Call) -> None:
        label = _label(call)
        self._model_call(call, label)
        want = 'pass inferenceConfig={"maxTokens": N}'
        config: ast.expr | None = None
        spread = False
        for kw in call.keywords:
            if kw.arg == "inferenceConfig":
                config = kw.value
            elif kw.arg is None:
                spread = True
        if config is None:
            if spread:
                # The whole request may be a dict: look for inferenceConfig.maxTokens in it.
                limit = self._request_dict_limit(call, ("inferenceConfig", "maxTokens"))
            else:
                limit = _Limit("no")
        else:
            info = self._dict_of(config)
            if info is None:
                limit = _Limit("unknown", hidden_by=f"inferenceConfig={ast.unparse(config)}")
            else:
                state, value = dicts.lookup(info, ("maxTokens",), self._dict_of)
                limit = _Limit(state, value, "maxTokens", hidden_by="inferenceConfig")
        self._judge(call, "TF002", limit, label, want, ())

    def _request_dict_limit(self, call: ast.Call, path: dicts.Path) -> _Limit:
        hidden: list[str] = []
        for kw in call.keywords:
            if kw.arg is None:
                info = self._dict_of(kw.value)
                if info is None:
                    hidden.append(f"**{ast.unparse(kw.value)}")
                    continue
                state, value = dicts.lookup(info, path, self._dict_of)
                if state == "yes":
                    return _Limit("yes", value, ".".join(path))
                if state == "unknown":
                    hidden.append(f"**{ast.unparse(kw.value)}")
        if hidden:
            return _Limit("unknown", hidden_by=", ".join(hidden))
        return _Limit("no")

    def _bedrock_invoke(self, call: ast.Call) -> None:
        label = _label(call)
        model_id: ast.expr | None = None
        body: ast.expr | None = None
        for kw in call.keywords:
            if kw.arg == "modelId":
                model_id = self._resolve_const(kw.value)
            elif kw.arg == "body":
                body = kw.value
            elif kw.arg is None:
                # invoke_model(**request) with the request built as a dict literal.
                request = self._dict_of(kw.value)
                if request is not None:
                    body = request.keys.get("body", body)
                    if "modelId" in request.keys:
                        model_id = self._resolve_const(request.keys["modelId"])
        family: str | None = None
        if isinstance(model_id, ast.Constant) and isinstance(model_id.value, str):
            family = sdk.bedrock_family(model_id.value)
            if family == "":
                return  # an embedding or image model: nothing to bound
        self._model_call(call, label)
        paths = sdk.bedrock_limit_paths(family)
        want = "set " + " or ".join(repr(".".join(p)) for p in paths) + " in the request body"
        if family is not None:
            want += f" (the key {family} models read)"
        if body is None:
            limit = _Limit("unknown", hidden_by="a body tokenfuse cannot see")
        else:
            info = self._dict_of(body)
            if info is None:
                limit = _Limit("unknown", hidden_by=f"body={ast.unparse(body)}")
            else:
                limit = _Limit("no")
                for path in paths:
                    state, value = dicts.lookup(info, path, self._dict_of)
                    if state == "yes":
                        limit = _Limit("yes", value, ".".join(path))
                        break
                    if state == "unknown":
                        limit = _Limit("unknown", hidden_by="the body's unpacked entries")
                if limit.state == "no":
                    wrong = [
                        p
                        for p in sdk.ANY_FAMILY_LIMITS
                        if p not in paths and dicts.lookup(info, p, self._dict_of)[0] == "yes"
                    ]
                    if wrong:
                        shown = " or ".join(repr(".".join(p)) for p in paths)
                        want = (
                            f"the body sets {'.'.join(wrong[0])!r}, which {family} models ignore; "
                            f"set {shown} instead"
                        )
        self._judge(call, "TF002", limit, label, want, ())

    # ---- visitors: bindings ----------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.imports[alias.asname] = alias.name
            else:
                root = alias.name.split(".", 1)[0]
                self.imports[root] = root
            self._note_module(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            return
        self._note_module(module)
        for alias in node.names:
            self.imports[alias.asname or alias.name] = f"{module}.{alias.name}"

    def _note_module(self, module: str) -> None:
        root = module.split(".", 1)[0]
        if root == "openai":
            self.seen_openai = True
        elif root == "anthropic":
            self.seen_anthropic = True

    def _bind_target(self, target: ast.expr, value: ast.expr | None, kind: str | None) -> None:
        if isinstance(target, ast.Name):
            self._bind(target.id, Value(kind, value))
        elif isinstance(target, ast.Attribute):
            if isinstance(target.value, ast.Name) and target.value.id in ("self", "cls") and self.classes:
                self.classes[-1][target.attr] = Value(kind, value)
        elif isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self._bind_target(elt.value if isinstance(elt, ast.Starred) else elt, None, None)
        elif isinstance(target, ast.Subscript):
            self._note_added_key(target)

    def _note_added_key(self, target: ast.Subscript) -> None:
        path: list[str] = []
        cur: ast.expr = target
        while isinstance(cur, ast.Subscript):
            key = cur.slice
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return
            path.append(key.value)
            cur = cur.value
        if isinstance(cur, ast.Name):
            found = self._lookup(cur.id)
            if found is not None:
                found[1].added_keys.setdefault(cur.id, set()).add(tuple(reversed(path)))

    def _counter_assign(self, target: ast.expr, value: ast.expr) -> None:
        key = loops.target_key(target)
        if key is None or not self.loops:
            return
        if isinstance(value, ast.BinOp) and any(
            loops.target_key(s) == key for s in (value.left, value.right)
        ):
            for loop in self.loops:
                loop.counters.add(key)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        kind = self._kind(node.value)
        for target in node.targets:
            if not isinstance(target, ast.Name):
                self.visit(target)
            self._bind_target(target, node.value, kind)
            self._counter_assign(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        kind = self._annotation_kind(node.annotation)
        if node.value is not None:
            self.visit(node.value)
            kind = self._kind(node.value) or kind
        self._bind_target(node.target, node.value, kind)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        key = loops.target_key(node.target)
        if key is not None:
            for loop in self.loops:
                loop.counters.add(key)
        if isinstance(node.target, ast.Subscript):
            self._note_added_key(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._bind(node.target.id, Value(self._kind(node.value), node.value))

    def _visit_with(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind_target(item.optional_vars, item.context_expr, self._kind(item.context_expr))
        for stmt in node.body:
            self.visit(stmt)

    visit_With = _visit_with
    visit_AsyncWith = _visit_with

    # ---- visitors: functions and classes ---------------------------------

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        args = node.args
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self.visit(default)
        self._bind(node.name, _UNKNOWN)
        returns = self._annotation_kind(node.returns)
        if returns is not None:
            self.func_returns[node.name] = returns
        scope = _Scope(is_class=False)
        params: set[str] = set()
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            params.add(arg.arg)
            scope.names[arg.arg] = Value(self._annotation_kind(arg.annotation), None)
        for star in (args.vararg, args.kwarg):
            if star is not None:
                params.add(star.arg)
                scope.names[star.arg] = _UNKNOWN
        # Methods are keyed `Class.name` so `self.name()` finds this class's method only.
        key = f"{self.class_names[-1]}.{node.name}" if self.scopes[-1].is_class else node.name
        summary = Function(key, node, params, args.kwarg.arg if args.kwarg else None)
        saved_loops, saved_func = self.loops, self.func
        self.loops, self.func = [], summary
        self.scopes.append(scope)
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()
        self.loops, self.func = saved_loops, saved_func
        self.functions.append(summary)

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        saved = self.loops
        self.loops = []
        scope = _Scope(is_class=False)
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            scope.names[arg.arg] = _UNKNOWN
        self.scopes.append(scope)
        self.visit(node.body)
        self.scopes.pop()
        self.loops = saved

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(kw.value for kw in node.keywords)]:
            self.visit(expr)
        self._bind(node.name, _UNKNOWN)
        self.scopes.append(_Scope(is_class=True))
        self.classes.append({})
        self.class_names.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self.class_names.pop()
        self.classes.pop()
        self.scopes.pop()

    # ---- visitors: loops and calls ---------------------------------------

    def _visit_loop_body(self, loop: Loop | None, node: ast.While | ast.For | ast.AsyncFor) -> None:
        for outer in self.loops:
            outer.inner_depth += 1
        if loop is not None:
            self.loops.append(loop)
        if isinstance(node, ast.While):
            self.visit(node.test)
        else:
            self._bind_target(node.target, None, None)
        for stmt in node.body:
            self.visit(stmt)
        if loop is not None:
            self.loops.pop()
            self.all_loops.append(loop)
        for outer in self.loops:
            outer.inner_depth -= 1
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_While(self, node: ast.While) -> None:
        self._visit_loop_body(Loop(node), node)

    def _visit_for(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        endless = isinstance(node.iter, ast.Call) and self._qualname(node.iter.func) == "itertools.count"
        self._visit_loop_body(Loop(node) if endless else None, node)

    visit_For = _visit_for
    visit_AsyncFor = _visit_for

    def visit_If(self, node: ast.If) -> None:
        for loop in self.loops:
            loop.ifs.append((node, loop.inner_depth > 0))
        if self.func is not None:
            self.func.ifs.append(node)
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        value = node.value.value if isinstance(node.value, ast.Await) else node.value
        if isinstance(value, ast.Call):
            name = loops.call_name(value)
            if name is not None and loops.GUARD_CALL.search(name):
                for loop in self.loops:
                    loop.guarded = True
                if self.func is not None:
                    self.func.guarded = True
        self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        self._classify(node)
        func = node.func
        local: str | None = None
        if isinstance(func, ast.Name):
            local = func.id
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in ("self", "cls")
            and self.class_names
        ):
            local = f"{self.class_names[-1]}.{func.attr}"
        if local is not None:
            entry = (local, node)
            for loop in self.loops:
                loop.local_calls.append(entry)
            if self.func is not None:
                self.func.local_calls.append(entry)
            else:
                self.module_calls.append(entry)
        if isinstance(func, ast.Attribute) and func.attr in ("update", "setdefault"):
            self._note_update(node)
        self.generic_visit(node)

    def _note_update(self, call: ast.Call) -> None:
        func = call.func
        assert isinstance(func, ast.Attribute)
        if not isinstance(func.value, ast.Name):
            return
        found = self._lookup(func.value.id)
        if found is None:
            return
        keys: set[dicts.Path] = set()
        if func.attr == "setdefault":
            if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
                keys.add((call.args[0].value,))
        else:
            info = dicts.from_keywords(call.keywords, self._dict_of)
            for arg in call.args:
                dicts.merge_spread(info, self._dict_of(arg))
            keys |= {(k,) for k in info.keys} | info.added
        found[1].added_keys.setdefault(func.value.id, set()).update(keys)

    # ---- after the walk ---------------------------------------------------

    def finish(self) -> list[RawFinding]:
        """All findings: the per-call ones from the walk, then TF004 and wrapper call sites."""
        return self.findings + agents.judge(
            self.functions, self.all_loops, self.module_calls, ceiling=self.ceiling, int_value=self._int_value
        )
