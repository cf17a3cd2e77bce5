"""Small asyncio helpers shared by the gateway and its background workers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

# asyncio keeps only a weak reference to running tasks; a fire-and-forget task
# with no other reference can be collected mid-flight. Keep them here.
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro)  # noqa: TID251
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task
