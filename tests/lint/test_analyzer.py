"""Targeted cases for the analyzer: how names, dicts, wrappers and loops are resolved."""

from __future__ import annotations

import textwrap

from tokenfuse.lint.config import Settings
from tokenfuse.lint.engine import lint_source


def _lint(src: str, **settings: object) -> list[tuple[int, str]]:
    found = lint_source(textwrap.dedent(src), "m.py", Settings(**settings))  # type: ignore[arg-type]
    return [(f.line, f.rule) for f in found]


def _messages(src: str, **settings: object) -> list[str]:
    return [f.message for f in lint_source(textwrap.dedent(src), "m.py", Settings(**settings))]  # type: ignore[arg-type]


OPENAI = "from openai import OpenAI\nclient = OpenAI()\n"


def test_raw_response_and_copy_are_still_calls() -> None:
    src = OPENAI + "client.chat.completions.with_raw_response.create(model='m', messages=[])\n"
    src += "client.copy(timeout=1).responses.create(model='m', input='x')\n"
    assert _lint(src) == [(3, "TF001"), (4, "TF001")]


def test_rebinding_a_name_forgets_the_client() -> None:
    src = OPENAI + "client = make_other()\nclient.responses.create(model='m', input='x')\n"
    # `responses.create` on an unknown object only counts in a module that imports openai.
    assert _lint(src) == [(4, "TF001")]
    assert _lint("client = make()\nclient.responses.create(customer='c', status='ok')\n") == []
    # ...or when the call has the endpoint's shape.
    assert _lint("client = make()\nclient.responses.create(model='m', input='x')\n") == [(2, "TF001")]


def test_self_attribute_client_and_annotations() -> None:
    src = """\
    from typing import Optional
    import anthropic
    from openai import OpenAI

    class Bot:
        client: Optional[OpenAI]
        claude: "anthropic.Anthropic"

        def go(self):
            self.client.completions.create(model="m", prompt="p")
            self.claude.messages.create(model="c", max_tokens=99_999, messages=[])
    """
    assert _lint(src) == [(10, "TF001"), (11, "TF005")]


def test_dict_mutations_are_followed() -> None:
    src = OPENAI + textwrap.dedent("""\
        a = {"model": "m"}
        a.update(max_tokens=5)
        client.chat.completions.create(**a)
        b = dict(model="m")
        b.setdefault("max_completion_tokens", 5)
        client.chat.completions.create(**b)
        c = {"model": "m", **defaults}
        client.chat.completions.create(**c)
        d = {"model": "m"}
        client.chat.completions.create(**d)
    """)
    assert _lint(src) == [(12, "TF001")]
    assert (10, "TF001") in _lint(src, strict=True)


def test_extra_body_counts_as_a_limit() -> None:
    src = OPENAI + "client.chat.completions.create(model='m', messages=[], extra_body={'max_tokens': 10})\n"
    assert _lint(src) == []


def test_ceiling_arithmetic_and_boundary() -> None:
    src = OPENAI + "client.chat.completions.create(model='m', messages=[], max_tokens=32 * 1000)\n"
    src += "client.chat.completions.create(model='m', messages=[], max_tokens=32 * 1000 + 1)\n"
    assert _lint(src) == [(4, "TF005")]
    assert _lint(src, max_tokens_ceiling=40_000) == []


def test_bedrock_family_specific_keys() -> None:
    src = """\
    import json, boto3
    brt = boto3.client("bedrock-runtime")
    brt.invoke_model(modelId="mistral.mistral-large-2402-v1:0", body=json.dumps({"prompt": "x", "max_tokens": 9}))
    brt.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps({"texts": ["x"]}))
    brt.invoke_model(modelId="amazon.titan-text-lite-v1", body=json.dumps({"inputText": "x", "maxTokenCount": 9}))
    brt.invoke_model(modelId=some_model, body=json.dumps({"prompt": "x", "max_gen_len": 9}))
    """
    found = _lint(src)
    assert found == [(5, "TF002")]
    assert "'textGenerationConfig.maxTokenCount'" in _messages(src)[0]


def test_converse_request_dict_spread() -> None:
    src = """\
    import boto3
    brt = boto3.client("bedrock-runtime")
    req = {"modelId": "x", "messages": [], "inferenceConfig": {"maxTokens": 100_000}}
    brt.converse(**req)
    brt.converse(**{"modelId": "x", "messages": []})
    """
    assert _lint(src) == [(3, "TF005"), (5, "TF002")]


def test_other_aws_clients_are_not_bedrock() -> None:
    src = 'import boto3\nsm = boto3.client("sagemaker-runtime")\nsm.invoke_model(modelId="m", body=b"")\n'
    assert _lint(src) == []


def test_wrapper_forwarding_reports_each_caller_once() -> None:
    src = OPENAI + textwrap.dedent("""\
        class Svc:
            def ask(self, prompt, **kwargs):
                return client.chat.completions.create(model="m", messages=[prompt], **kwargs)

            def a(self):
                return self.ask("x")

            def b(self):
                return self.ask("y", max_tokens=128_000)

            def c(self, **opts):
                return self.ask("z", **opts)
    """)
    assert _lint(src) == [(8, "TF001"), (11, "TF005")]


def test_break_in_inner_loop_does_not_bound_outer_loop() -> None:
    src = OPENAI + textwrap.dedent("""\
        def run():
            steps = 0
            while True:
                client.chat.completions.create(model="m", messages=[], max_tokens=5)
                for x in range(3):
                    steps += 1
                    if steps > 10:
                        break
    """)
    assert _lint(src) == [(5, "TF004")]
    assert _lint(src.replace("break", "return")) == []


def test_or_condition_needs_every_branch_bounded() -> None:
    src = OPENAI + textwrap.dedent("""\
        def run(max_turns):
            turns = 0
            while turns < max_turns or pending():
                turns += 1
                client.chat.completions.create(model="m", messages=[], max_tokens=5)
    """)
    assert _lint(src) == [(5, "TF004")]
    assert _lint(src.replace(" or ", " and ")) == []


def test_loop_message_says_why() -> None:
    src = OPENAI + textwrap.dedent("""\
        def run():
            while not done():
                client.chat.completions.create(model="m", messages=[], max_tokens=5)
    """)
    (message,) = _messages(src)
    assert message.startswith(
        "`while not done()` loop calls a model (client.chat.completions.create at line 5)"
    )
    assert "no iteration counter or budget" in message


def test_model_call_in_nested_function_does_not_count_for_the_loop() -> None:
    src = OPENAI + textwrap.dedent("""\
        def serve(queue):
            while True:
                def handler(item):
                    return client.chat.completions.create(model="m", messages=[item], max_tokens=5)
                queue.register(handler)
    """)
    assert _lint(src) == []


def test_suppression_on_last_line_of_a_call_and_bare_ignore() -> None:
    src = (
        OPENAI + "client.chat.completions.create(\n    model='m',\n    messages=[],\n)  # tokenfuse: ignore\n"
    )
    assert _lint(src) == []


def test_non_ascii_column_counts_characters() -> None:
    src = OPENAI + "x = ('héllo', client.chat.completions.create(model='m', messages=[]))\n"
    found = lint_source(src, "m.py", Settings())
    assert [(f.line, f.col) for f in found] == [(3, 15)]


def test_forwarded_limit_from_module_constant_is_checked_against_ceiling() -> None:
    src = OPENAI + textwrap.dedent("""\
        BIG = 64_000

        def ask(prompt, **kw):
            return client.chat.completions.create(model="m", messages=[prompt], **kw)

        def go():
            return ask("x", max_tokens=BIG)
    """)
    assert _lint(src) == [(9, "TF005")]


def test_negated_budget_call_guard_bounds_loop() -> None:
    src = OPENAI + textwrap.dedent("""\
        def run(budget):
            while True:
                if not budget.allows():
                    break
                client.chat.completions.create(model="m", messages=[], max_tokens=5)
    """)
    assert _lint(src) == []
    assert _lint(src.replace("budget.allows()", "queue.empty()")) == [(4, "TF004")]


def test_mutual_recursion_and_its_guard() -> None:
    src = OPENAI + textwrap.dedent("""\
        def plan(goal, depth=0):
            r = client.chat.completions.create(model="m", messages=[goal], max_tokens=5)
            return [run(s, depth) for s in r.choices]

        def run(step, depth):
            if step.startswith("SUB"):
                return plan(step, depth + 1)
            return step
    """)
    assert _lint(src) == [(3, "TF004")]
    assert "plan() recurses through run() (line 5)" in _messages(src)[0]
    guarded = src.replace('if step.startswith("SUB"):', 'if step.startswith("SUB") and depth < 3:')
    assert _lint(guarded) == []


def test_injected_langchain_model_in_a_loop() -> None:
    src = textwrap.dedent("""\
        from langchain_core.language_models import BaseChatModel

        def loop(llm: BaseChatModel, text: str) -> str:
            while "OK" not in text:
                text = llm.invoke(text).content
            return text
    """)
    assert _lint(src) == [(4, "TF004")]


def test_clock_comparison_bounds_a_loop() -> None:
    src = OPENAI + textwrap.dedent("""\
        import time

        def hammer(t0):
            while time.monotonic() - t0 < 3:
                client.chat.completions.create(model="m", messages=[], max_tokens=2)
    """)
    assert _lint(src) == []


def test_init_chat_model_and_twilio_messages() -> None:
    src = textwrap.dedent("""\
        import anthropic
        from langchain.chat_models import init_chat_model
        from twilio.rest import Client

        llm = init_chat_model("gpt-4o", model_provider="openai")
        bounded = init_chat_model("claude-sonnet-4-5", model_provider="anthropic", max_tokens=512)
        sms = Client()

        def notify_forever(numbers):
            while True:
                for n in numbers:
                    sms.messages.create(to=n, from_="+100", body="hi")
    """)
    assert _lint(src) == [(5, "TF003")]


def test_invoke_model_request_as_kwargs_dict() -> None:
    src = textwrap.dedent("""\
        import json, boto3
        brt = boto3.client("bedrock-runtime")
        ok = {"modelId": "anthropic.claude-3-5-haiku-20241022-v1:0", "body": json.dumps({"max_tokens": 200})}
        brt.invoke_model(**ok)
        bad = {"modelId": "meta.llama3-8b-instruct-v1:0", "body": json.dumps({"max_tokens": 200})}
        brt.invoke_model(**bad)
    """)
    assert _lint(src) == [(6, "TF002")]
    assert _lint(src, strict=True) == [(6, "TF002")]


def test_self_calls_resolve_to_the_same_class() -> None:
    src = OPENAI + textwrap.dedent("""\
        class A:
            def ask(self, prompt, **kw):
                return client.chat.completions.create(model="m", messages=[prompt], **kw)

        class B:
            def ask(self, prompt):
                return prompt

            def go(self):
                while True:
                    self.ask("x")
    """)
    assert _lint(src) == []
