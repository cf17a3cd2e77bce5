"""The gateway tests' real simulator and gateway, reused for the operations endpoints."""

from tests.gateway.conftest import sim, stack

__all__ = ["sim", "stack"]
