"""Precision and recall of every rule on the realistic-snippet corpus (printed with -s or on failure)."""

from __future__ import annotations

import pytest

from tests.lint.conftest import CORPUS_REPORT
from tests.lint.corpus_eval import CORPUS, score
from tokenfuse.lint.rules import ALL_CODES


def test_corpus_precision_and_recall(request: pytest.FixtureRequest) -> None:
    s = score()
    lines = [f"corpus: {s.snippets} snippets, {len(s.expected)} expected findings, {len(s.found)} reported"]
    lines.append(f"overall: precision={s.precision:.3f} recall={s.recall:.3f}")
    for rule in sorted(ALL_CODES):
        r = s.for_rule(rule)
        lines.append(
            f"{rule}: precision={r.precision:.3f} recall={r.recall:.3f} "
            f"(tp={len(r.true_positives)} fp={len(r.false_positives)} fn={len(r.false_negatives)})"
        )
    positive = {k[0] for k in s.expected}
    wrong = sorted({k[0] for k in s.false_positives | s.false_negatives})
    lines.append(
        f"snippets: {len(positive)} with findings, {s.snippets - len(positive)} clean; "
        f"misclassified: {', '.join(wrong) or 'none'}"
    )
    for kind, keys in (("false positive", s.false_positives), ("missed", s.false_negatives)):
        for name, line, rule in sorted(keys):
            lines.append(f"  {kind}: {name}:{line} {rule}")
    report = "\n".join(lines)
    print("\n" + report)
    request.config.stash[CORPUS_REPORT] = report
    assert s.snippets >= 40
    assert s.precision >= 0.95, report
    assert s.recall >= 0.95, report


def test_corpus_has_positives_and_negatives_for_every_rule() -> None:
    files = [p.name for p in CORPUS.glob("*.py")]
    for rule in sorted(ALL_CODES):
        prefix = rule.lower()
        assert any(f.startswith(f"{prefix}_pos") for f in files), f"no positive snippet for {rule}"
        assert any(f.startswith(f"{prefix}_neg") for f in files), f"no negative snippet for {rule}"
