"""A bounded least-recently-used map for caches keyed by what clients send.

Every cache whose keys come from a request (a model name, a session id) must
be bounded, or a client cycling through distinct values grows the process
without limit. ``OrderedDict`` keeps recency order; a hit moves to the end and
an insert past ``size`` drops the oldest.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    __slots__ = ("_data", "size")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("an LRU cache needs a positive size")
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        """The cached value; KeyError when absent (values may legitimately be None)."""
        value = self._data[key]
        try:
            self._data.move_to_end(key)
        except KeyError:  # evicted by another thread between the two lines
            pass
        return value

    def put(self, key: K, value: V) -> None:
        data = self._data
        data[key] = value
        try:
            data.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile; it was only a cache
            pass
        while len(data) > self.size:
            try:
                data.popitem(last=False)
            except KeyError:
                break

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def clear(self) -> None:
        self._data.clear()
