"""``tokenfuse simulate``: run the provider simulator in the foreground."""

from __future__ import annotations

import argparse
import sys

from tokenfuse.simulator.app import Simulator
from tokenfuse.simulator.server import bind, serve_forever
from tokenfuse.simulator.state import SimConfig


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="tokenfuse simulate",
        description="Serve simulated OpenAI, Anthropic and Bedrock runtime APIs with deterministic usage.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_non_negative, default=9100, help="port (default 9100; 0 picks one)")
    parser.add_argument(
        "--output-tokens",
        type=_non_negative,
        default=defaults.output_tokens,
        help=f"output tokens per answer, before the request's own limit (default {defaults.output_tokens})",
    )
    parser.add_argument(
        "--latency-ms", type=_non_negative, default=defaults.latency_ms, help="delay before the first byte"
    )
    parser.add_argument(
        "--chunk-tokens",
        type=_non_negative,
        default=defaults.chunk_tokens,
        help=f"output tokens per stream delta (default {defaults.chunk_tokens})",
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=_non_negative,
        default=defaults.chunk_delay_ms,
        help="delay between stream deltas",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.chunk_tokens < 1:
        print("tokenfuse simulate: --chunk-tokens must be at least 1", file=sys.stderr)
        return 2
    config = SimConfig(
        output_tokens=args.output_tokens,
        latency_ms=args.latency_ms,
        chunk_tokens=args.chunk_tokens,
        chunk_delay_ms=args.chunk_delay_ms,
    )
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(
            f"tokenfuse simulate: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
            "pick a free --port or stop the process using it",
            file=sys.stderr,
        )
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        serve_forever(sock, Simulator(config), f"tokenfuse simulator listening on http://{host}:{port}")
    except KeyboardInterrupt:
        pass
    return 0
