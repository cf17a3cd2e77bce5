"""Automatic prompt caching: placing breakpoints, verifying they engage, diagnosing when not."""
