"""Hard spending limits: request bounds, budgets and session caps (``limiter``),
counter backends (memory, Redis), kill switches, run-time budgets and alerts."""
