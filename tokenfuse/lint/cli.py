"""`tokenfuse lint PATH...`: exit 1 on findings, 0 when clean, 2 on usage errors."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from tokenfuse.lint import config, engine, report, sarif
from tokenfuse.lint.config import ConfigError, Settings
from tokenfuse.lint.rules import RULES


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    rules = "\n".join(f"  {code}  {rule.summary}" for code, rule in RULES.items())
    parser = _Parser(
        prog="tokenfuse lint",
        description="Find LLM calls without an output-token limit and agent loops without an iteration budget.",
        epilog=f"rules:\n{rules}\n\nSuppress one line with `# tokenfuse: ignore[TF001]`. "
        "Configure under [tool.tokenfuse.lint] in pyproject.toml; see docs/lint.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to lint (default: .)")
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text", help="output format")
    parser.add_argument("--select", metavar="RULES", help="comma-separated rules to run (default: all)")
    parser.add_argument("--ignore", metavar="RULES", help="comma-separated rules to skip")
    parser.add_argument(
        "--max-tokens-ceiling", metavar="N", type=_positive_int, help="TF005 ceiling (default: 32000)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also report limits hidden in **kwargs or variables it cannot see",
    )
    parser.add_argument(
        "--config", metavar="FILE", type=Path, help="pyproject.toml to read (default: nearest)"
    )
    parser.add_argument("--output", "-o", metavar="FILE", type=Path, help="write the report here, not stdout")
    parser.add_argument(
        "--jobs",
        "-j",
        metavar="N",
        type=_positive_int,
        help="worker processes (default: 1 below ~8 MB of source, else one per CPU)",
    )
    return parser


def _settings(args: argparse.Namespace, paths: list[Path]) -> Settings:
    pyproject = args.config if args.config is not None else config.find_pyproject(paths[0])
    if args.config is not None and not args.config.is_file():
        raise ConfigError(f"--config {args.config}: no such file")
    settings = config.load(pyproject) if pyproject is not None else Settings(exclude=config.DEFAULT_EXCLUDE)
    if args.select is not None:
        settings = replace(settings, select=config.parse_codes(args.select, "--select"))
    if args.ignore is not None:
        settings = replace(settings, ignore=settings.ignore | config.parse_codes(args.ignore, "--ignore"))
    if args.max_tokens_ceiling is not None:
        settings = replace(settings, max_tokens_ceiling=args.max_tokens_ceiling)
    if args.strict:
        settings = replace(settings, strict=True)
    return settings


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"tokenfuse lint: {exc} (see `tokenfuse lint --help`)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    paths = [Path(p) for p in args.paths] or [Path(".")]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(
            f"tokenfuse lint: {missing[0]}: no such file or directory; pass existing paths", file=sys.stderr
        )
        return 2
    try:
        settings = _settings(args, paths)
    except ConfigError as exc:
        print(f"tokenfuse lint: {exc}", file=sys.stderr)
        return 2
    result = engine.lint_paths(paths, settings, jobs=args.jobs)
    for error in result.errors:
        print(f"tokenfuse lint: warning: {error}", file=sys.stderr)
    if args.format == "json":
        out = report.as_json(result.findings)
    elif args.format == "sarif":
        out = sarif.as_sarif(result.findings)
    else:
        out = report.text(result.findings)
    if args.output is not None:
        try:
            args.output.write_text(out, encoding="utf-8")
        except OSError as exc:
            print(f"tokenfuse lint: --output {args.output}: cannot write ({exc.strerror})", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(out)
    n = len(result.findings)
    noun = "finding" if n == 1 else "findings"
    print(f"tokenfuse lint: {n} {noun} in {result.files} files", file=sys.stderr)
    return 1 if n else 0
