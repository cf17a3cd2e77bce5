"""SARIF output validates against the SARIF 2.1.0 schema (offline subset) and meets GitHub's needs."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.lint.corpus_eval import CORPUS
from tokenfuse.lint import cli
from tokenfuse.lint.config import Settings
from tokenfuse.lint.engine import lint_paths
from tokenfuse.lint.rules import RULES, Finding
from tokenfuse.lint.sarif import to_sarif

SCHEMA = json.loads((Path(__file__).parent / "sarif-schema-2.1.0.subset.json").read_text(encoding="utf-8"))


def _validator() -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    return jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def corpus_log() -> dict[str, Any]:
    here = os.getcwd()
    os.chdir(CORPUS.parent)  # so paths are relative, as in a repository checkout
    try:
        result = lint_paths([Path("corpus")], Settings(), jobs=1)
        return to_sarif(result.findings)
    finally:
        os.chdir(here)


def test_corpus_log_validates(corpus_log: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(corpus_log), key=str)
    assert not errors, errors[0].message
    assert len(corpus_log["runs"][0]["results"]) >= 40


def test_schema_rejects_broken_logs(corpus_log: dict[str, Any]) -> None:
    validator = _validator()
    no_message = copy.deepcopy(corpus_log)
    del no_message["runs"][0]["results"][0]["message"]
    assert not validator.is_valid(no_message)
    bad_line = copy.deepcopy(corpus_log)
    bad_line["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    assert not validator.is_valid(bad_line)
    wrong_version = dict(corpus_log, version="2.0.0")
    assert not validator.is_valid(wrong_version)


def test_github_code_scanning_needs(corpus_log: dict[str, Any]) -> None:
    run = corpus_log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"]
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == sorted(RULES)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"] and rule["help"]["text"]
    fingerprints = set()
    for result in run["results"]:
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        loc = result["locations"][0]["physicalLocation"]
        uri = loc["artifactLocation"]["uri"]
        assert not uri.startswith("/") and "\\" not in uri and uri.startswith("corpus/")
        assert loc["region"]["startLine"] >= 1 and loc["region"]["startColumn"] >= 1
        fingerprints.add(result["partialFingerprints"]["tokenfuseLineHash/v1"])
    assert len(fingerprints) == len(run["results"])


def test_empty_log_validates() -> None:
    log = to_sarif([])
    assert _validator().is_valid(log)
    assert log["runs"][0]["results"] == []


def test_fingerprint_survives_lines_inserted_above(tmp_path: Path) -> None:
    src = "from openai import OpenAI\nc = OpenAI()\nc.chat.completions.create(model='m', messages=[])\n"
    f = tmp_path / "a.py"
    f.write_text(src)
    first = to_sarif([Finding(str(f), 3, 1, "TF001", "m")])
    f.write_text("import os\n\n" + src)
    second = to_sarif([Finding(str(f), 5, 1, "TF001", "m")])
    key = "tokenfuseLineHash/v1"
    assert (
        first["runs"][0]["results"][0]["partialFingerprints"][key]
        == (second["runs"][0]["results"][0]["partialFingerprints"][key])
    )


def test_cli_writes_sarif_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lint.sarif"
    code = cli.main([str(CORPUS / "tf002_pos_converse.py"), "--format", "sarif", "-o", str(out)])
    assert code == 1
    log = json.loads(out.read_text())
    assert _validator().is_valid(log)
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == ["TF002"]
    assert capsys.readouterr().out == ""


def test_absolute_paths_become_file_uris(tmp_path: Path) -> None:
    log = to_sarif([Finding(str(tmp_path / "a.py"), 1, 1, "TF001", "m")])
    location = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": (tmp_path / "a.py").as_uri()}
    assert _validator().is_valid(log)
