"""Live guards: cache-miss, context-growth and loop detection behind one small interface."""

from tokenfuse.guards.base import Finding, Guard, Guards, Prompt

__all__ = ["Finding", "Guard", "Guards", "Prompt"]
