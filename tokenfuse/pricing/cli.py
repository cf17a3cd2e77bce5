"""`tokenfuse prices [MODEL] [--json] [--config FILE]`: what a model costs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from tokenfuse.pricing.catalog import PriceBook, Resolution
from tokenfuse.pricing.price import PRICE_FIELDS, Price, plain

_HEADERS = ("model", "input", "output", "cache read", "cache write 5m", "cache write 1h", "from")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenfuse prices",
        description="Show what a model costs, in USD per million tokens.",
    )
    parser.add_argument(
        "model", nargs="?", help="a model id as a client would send it (e.g. us.anthropic.claude-...)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON; prices are decimal strings")
    parser.add_argument("--config", metavar="FILE", help="include this config's `prices:` and `pricing.file`")
    return parser


def _book(config_path: str | None) -> PriceBook:
    if config_path is None:
        return PriceBook.default()
    # Imported here so `tokenfuse prices` without --config never needs the config module.
    try:
        from tokenfuse.config import load_config
    except ImportError:
        raise ValueError("--config is not available in this build (tokenfuse.config is missing)") from None

    cfg = load_config(config_path)
    overrides: dict[str, Mapping[str, object]] = {}
    for name, override in (getattr(cfg, "prices", None) or {}).items():
        dump = getattr(override, "model_dump", None)
        overrides[name] = dump() if callable(dump) else override
    pricing = getattr(cfg, "pricing", None)
    return PriceBook.build(overrides=overrides, litellm_file=getattr(pricing, "file", None))


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i in (0, len(row) - 1) else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _rates(price: Price) -> tuple[str, ...]:
    return tuple(_cell(v) for v in price.as_dict().values())


def _price_json(price: Price) -> dict[str, object]:
    doc: dict[str, object] = dict(price.as_dict())
    if price.long_context is not None:
        doc["long_context"] = {
            "above_input_tokens": price.long_context_threshold,
            **price.long_context.as_dict(),
        }
    return doc


def _show_all(book: PriceBook, as_json: bool) -> int:
    entries = book.entries()
    if as_json:
        models = {
            name: {**_price_json(price), "from": layer, "source": source}
            for name, price, layer, source in entries
        }
        print(json.dumps({"unit": "USD per million tokens", "models": models}, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [_HEADERS]
    rows += [(name, *_rates(price), layer) for name, price, layer, _ in entries]
    print("USD per million tokens; '-' = no such token class (billed at the input rate)\n")
    print(_table(rows))
    tiered = [name for name, price, _, _ in entries if price.long_context is not None]
    if tiered:
        print(
            f"\nLong-context tier (higher rates above a prompt size): {', '.join(tiered)}; see `tokenfuse prices MODEL`."
        )
    return 0


def _resolution_json(res: Resolution) -> dict[str, object]:
    return {
        "requested": res.requested,
        "model": res.matched,
        "from": res.layer,
        "source": res.source,
        "steps": list(res.steps),
        "inference_profile": res.geo,
        "regional_premium": None if res.premium is None else plain(res.premium),
        "unit": "USD per million tokens",
        "prices": _price_json(res.price),
    }


def _show_one(book: PriceBook, model: str, as_json: bool) -> int:
    res = book.resolve(model)
    if res is None:
        close = book.suggest(model)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        print(
            f"tokenfuse prices: no price known for {model!r}.{hint} "
            "Add it under `prices:` in the config or pass a LiteLLM price file via `pricing: {file: ...}`.",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(json.dumps(_resolution_json(res), indent=2))
        return 0
    print(f"model      {res.requested}")
    if res.matched != res.requested:
        print(f"priced as  {res.matched}")
    for step in res.steps:
        print(f"           - {step}")
    if res.premium is not None:
        print(f"premium    +{plain(res.premium * 100)}% for the {res.geo!r} regional inference profile")
    elif res.geo == "global":
        print("premium    none (global inference profile is the base price)")
    print(f"from       {res.layer}: {res.source}")
    print("\nUSD per million tokens")
    labels = dict(
        zip(PRICE_FIELDS, ("input", "output", "cache read", "cache write 5m", "cache write 1h"), strict=True)
    )
    tiers = [("", res.price)]
    if res.price.long_context is not None:
        tiers.append((f"above {res.price.long_context_threshold:,} input tokens", res.price.long_context))
    for title, price in tiers:
        if title:
            print(f"\n{title} (the whole request)")
        for field, value in price.as_dict().items():
            shown = value if value is not None else f"- (billed at input rate {plain(price.input)})"
            print(f"  {labels[field]:<15} {shown}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        book = _book(args.config)
    except (ValueError, OSError) as exc:
        print(f"tokenfuse prices: {exc}", file=sys.stderr)
        return 2
    if args.model is None:
        return _show_all(book, args.json)
    return _show_one(book, args.model, args.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
