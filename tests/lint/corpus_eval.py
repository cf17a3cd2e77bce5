"""Score the linter against the annotated corpus: `# expect: TF00N` marks each finding that must appear."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tokenfuse.lint.config import Settings
from tokenfuse.lint.engine import lint_source

CORPUS = Path(__file__).parent / "corpus"
_EXPECT = re.compile(r"#\s*expect:\s*([A-Z0-9,\s]+)")

Key = tuple[str, int, str]


@dataclass
class Score:
    expected: set[Key] = field(default_factory=set)
    found: set[Key] = field(default_factory=set)
    snippets: int = 0

    @property
    def true_positives(self) -> set[Key]:
        return self.expected & self.found

    @property
    def false_positives(self) -> set[Key]:
        return self.found - self.expected

    @property
    def false_negatives(self) -> set[Key]:
        return self.expected - self.found

    @property
    def precision(self) -> float:
        return len(self.true_positives) / len(self.found) if self.found else 1.0

    @property
    def recall(self) -> float:
        return len(self.true_positives) / len(self.expected) if self.expected else 1.0

    def for_rule(self, rule: str) -> Score:
        return Score(
            {k for k in self.expected if k[2] == rule}, {k for k in self.found if k[2] == rule}, self.snippets
        )


def expected_in(source: str, name: str) -> set[Key]:
    out: set[Key] = set()
    for lineno, line in enumerate(source.splitlines(), 1):
        match = _EXPECT.search(line)
        if match:
            out |= {(name, lineno, code.strip()) for code in match.group(1).split(",") if code.strip()}
    return out


def score(settings: Settings | None = None) -> Score:
    result = Score()
    for path in sorted(CORPUS.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        result.snippets += 1
        result.expected |= expected_in(source, path.name)
        result.found |= {
            (path.name, f.line, f.rule) for f in lint_source(source, path.name, settings or Settings())
        }
    return result
