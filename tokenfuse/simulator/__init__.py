"""The provider simulator: OpenAI, Anthropic and Bedrock runtime wire formats
with deterministic usage, for tests, the demo and benchmarks.

``app.Simulator`` is the ASGI app, ``server.SimulatorThread`` runs it in the
background, ``tokenfuse simulate`` (``cli``) in the foreground. The token and
caching model is in ``tokens``; docs/simulator.md describes it all.
"""
