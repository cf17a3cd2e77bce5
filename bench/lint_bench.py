"""Time `tokenfuse lint` over ~100,000 lines of Python and print the numbers.

Two corpora, each written to a temporary directory:
  * generated: modules in the style real LLM applications are written
    (OpenAI/Azure, Bedrock, LiteLLM and LangChain clients, agent loops,
    wrappers, plus ordinary dataclasses and helpers), so every rule's code
    path runs;
  * stdlib: ~100,000 lines of the running interpreter's standard library,
    copied as-is: real code that is mostly not about LLMs.
Each is timed end to end as a user runs it (`python -m tokenfuse lint DIR`,
interpreter start-up included), in-process (the default below ~8 MB of
source) and with two worker processes; best and median of --repeat runs.

    python bench/lint_bench.py [--lines 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

_OPENAI_SERVICE = '''\
"""{title} service."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from openai import {client_cls}

log = logging.getLogger(__name__)
MODEL = "{model}"
MAX_OUT = {max_out}


@dataclass
class {cls}Request:
    user_id: str
    text: str
    tags: list[str] = field(default_factory=list)

    def normalized(self) -> str:
        return " ".join(self.text.split()).strip()


class {cls}Service:
    def __init__(self, model: str = MODEL) -> None:
        self.client = {client_cls}()
        self.model = model
        self.calls = 0

    {async_}def run(self, req: {cls}Request) -> str:
        self.calls += 1
        log.info("request from %s", req.user_id)
        resp = {await_}self.client.chat.completions.create(
            model=self.model,
            messages=[
                {{"role": "system", "content": "You are a helpful {title} assistant."}},
                {{"role": "user", "content": req.normalized()}},
            ],
            {limit}temperature=0.{temp},
        )
        return resp.choices[0].message.content or ""

    {async_}def ask(self, prompt: str, **options: Any) -> str:
        resp = {await_}self.client.chat.completions.create(
            model=self.model, messages=[{{"role": "user", "content": prompt}}], **options
        )
        return resp.choices[0].message.content or ""

    {async_}def summary(self, text: str) -> str:
        return {await_}self.ask(f"Summarise: {{text}}", max_tokens=MAX_OUT)


def parse_tags(raw: str) -> list[str]:
    out: list[str] = []
    for part in raw.split(","):
        part = part.strip().lower()
        if part and part not in out:
            out.append(part)
    return out


def score(values: list[float]) -> float:
    if not values:
        return 0.0
    total = 0.0
    for i, v in enumerate(values):
        total += v * (1.0 / (i + 1))
    return total / len(values)
'''

_BEDROCK_MODULE = '''\
"""Bedrock helpers for {title}."""
import json
import time

import boto3

runtime = boto3.client("bedrock-runtime", region_name="{region}")
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
LLAMA = "meta.llama3-70b-instruct-v1:0"


def converse(question: str) -> str:
    r = runtime.converse(
        modelId=CLAUDE,
        messages=[{{"role": "user", "content": [{{"text": question}}]}}],
        {converse_cfg}
    )
    return r["output"]["message"]["content"][0]["text"]


def llama(prompt: str) -> str:
    body = {{"prompt": prompt, "{llama_key}": 512, "temperature": 0.{temp}}}
    r = runtime.invoke_model(modelId=LLAMA, body=json.dumps(body))
    return json.loads(r["body"].read())["generation"]


def tool_loop(messages: list, tools: dict, run_tool) -> list:
    steps = 0
    while True:
        {step_inc}
        r = runtime.converse(modelId=CLAUDE, messages=messages, toolConfig=tools, inferenceConfig={{"maxTokens": 800}})
        messages.append(r["output"]["message"])
        if r["stopReason"] != "tool_use":
            return messages
        {step_guard}
        messages.append(run_tool(r["output"]["message"]))


def backoff(attempt: int) -> float:
    delay = min(30.0, 0.5 * (2**attempt))
    time.sleep(0)
    return delay
'''

_FRAMEWORK_MODULE = '''\
"""LiteLLM and LangChain glue for {title}."""
import itertools

import litellm
from langchain_openai import ChatOpenAI
from langchain_aws import ChatBedrockConverse

chat = ChatOpenAI(model="gpt-4o", {lc_limit}temperature=0)
converse_llm = ChatBedrockConverse(model="us.amazon.nova-pro-v1:0", max_tokens={big})


async def answer(question: str) -> str:
    resp = await litellm.acompletion(
        model="gpt-4o-mini", messages=[{{"role": "user", "content": question}}], {ll_limit}
    )
    return resp.choices[0].message.content


def refine(draft: str, good_enough) -> str:
    for attempt in itertools.count():
        draft = chat.invoke(f"Improve attempt {{attempt}}: {{draft}}").content
        if good_enough(draft):
            return draft
    return draft


class Cache:
    def __init__(self) -> None:
        self._data: dict[str, str] = {{}}

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, value: str) -> None:
        if len(self._data) > 1000:
            self._data.pop(next(iter(self._data)))
        self._data[key] = value
'''

_PLAIN_MODULE = '''\
"""Plain application code: {title}."""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class {cls}:
    id: int
    name: str
    created: dt.datetime

    @property
    def age_days(self) -> int:
        return (dt.datetime.now() - self.created).days


def group_by_initial(items: list[{cls}]) -> dict[str, list[{cls}]]:
    out: dict[str, list[{cls}]] = defaultdict(list)
    for item in items:
        out[item.name[:1].upper()].append(item)
    return dict(out)


def paginate(items: list[{cls}], page: int, size: int = 20) -> list[{cls}]:
    start = max(page - 1, 0) * size
    return items[start : start + size]


def retry(fn, attempts: int = {n}):
    last = None
    for _ in range(attempts):
        try:
            return fn()
        except OSError as exc:
            last = exc
    raise RuntimeError("gave up") from last


def parse_row(row: str) -> {cls}:
    ident, name, created = row.split(";")
    return {cls}(int(ident), name.strip(), dt.datetime.fromisoformat(created))
'''

_WORDS = (
    "billing search support triage report invoice catalog review onboarding audit routing ranking".split()
)


def generate(root: Path, target_lines: int, seed: int = 7) -> tuple[int, int]:
    rng = random.Random(seed)
    lines = files = 0
    while lines < target_lines:
        word = rng.choice(_WORDS)
        title = f"{word} {files}"
        cls = f"{word.title()}{files}"
        kind = files % 4
        if kind == 0:
            text = _OPENAI_SERVICE.format(
                title=title,
                cls=cls,
                client_cls=rng.choice(["OpenAI", "AsyncOpenAI", "AzureOpenAI"]),
                model=rng.choice(["gpt-4o", "gpt-4o-mini", "o4-mini"]),
                max_out=rng.choice([256, 1024, 64000]),
                async_="async " if files % 8 == 0 else "",
                await_="await " if files % 8 == 0 else "",
                limit="max_completion_tokens=600,\n            " if rng.random() < 0.5 else "",
                temp=rng.randint(0, 9),
            )
        elif kind == 1:
            guarded = rng.random() < 0.5
            text = _BEDROCK_MODULE.format(
                title=title,
                region=rng.choice(["us-east-1", "us-west-2", "eu-west-1"]),
                converse_cfg='inferenceConfig={"maxTokens": 512},' if rng.random() < 0.5 else "",
                llama_key=rng.choice(["max_gen_len", "max_tokens"]),
                temp=rng.randint(0, 9),
                step_inc="steps += 1" if guarded else "pass",
                step_guard="if steps >= 10:\n            break" if guarded else "pass",
            )
        elif kind == 2:
            text = _FRAMEWORK_MODULE.format(
                title=title,
                lc_limit="max_tokens=1024, " if rng.random() < 0.5 else "",
                ll_limit="max_tokens=300" if rng.random() < 0.5 else "temperature=0.2",
                big=rng.choice([2048, 100_000]),
            )
        else:
            text = _PLAIN_MODULE.format(title=title, cls=cls, n=rng.randint(2, 6))
        sub = root / f"pkg{files // 50}"
        sub.mkdir(exist_ok=True)
        (sub / f"mod_{files}.py").write_text(text, encoding="utf-8")
        lines += text.count("\n")
        files += 1
    return files, lines


def collect_stdlib(root: Path, target_lines: int) -> tuple[int, int]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = files = 0
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        dest = root / path.relative_to(stdlib)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
        lines += text.count("\n")
        files += 1
        if lines >= target_lines:
            break
    return files, lines


def time_cli(root: Path, repeat: int, extra: list[str]) -> tuple[float, float, int, str]:
    """Best and median wall-clock seconds of `python -m tokenfuse lint ROOT`, its exit code and summary."""
    times: list[float] = []
    rc = 0
    summary = ""
    cmd = [sys.executable, "-m", "tokenfuse", "lint", str(root), "--format", "json", *extra]
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        rc = proc.returncode
        summary = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return min(times), statistics.median(times), rc, summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tokenfuse-lint-bench-"))
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} CPUs, load average {load}")
        for name, build in (("generated", generate), ("stdlib", collect_stdlib)):
            root = tmp / name
            root.mkdir()
            files, lines = build(root, args.lines)
            for label, extra in (("in-process", ["--jobs", "1"]), ("--jobs 2", ["--jobs", "2"])):
                best, median, rc, summary = time_cli(root, args.repeat, extra)
                print(
                    f"{name:9} {files:5d} files {lines:7d} lines  {label:10}  best {best:5.2f} s  "
                    f"median {median:5.2f} s of {args.repeat}  ({lines / best:,.0f} lines/s)  exit {rc}  [{summary}]"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
