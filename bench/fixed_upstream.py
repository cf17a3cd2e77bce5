"""A fixed-answer upstream for measuring the gateway alone: every POST gets the same chat completion.

    python bench/fixed_upstream.py --port 8099

The simulator does real work per request (it tokenizes the prompt, builds the
answer, keeps state): about 50–100 µs of CPU. On a 2-vCPU machine that also
runs the load generator, that work competes with a second gateway worker, so
``bench/gateway_cpu.py``'s worker cell uses this instead: httptools parses the
request, one pre-built response is written, connections stay open. It plays
the part nginx's ``return 200`` plays in issue 14's side-by-side table, without
a system package. The answer is an OpenAI chat completion with usage, so the
gateway meters and prices it like any other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import httptools

_BODY = json.dumps({
    "id": "chatcmpl-fixed",
    "object": "chat.completion",
    "created": 1764547200,
    "model": "test-model",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "A fixed answer from the bench upstream."}}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 9, "total_tokens": 33},
}, separators=(",", ":")).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class FixedAnswer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(RESPONSE)


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(FixedAnswer, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
