"""Loop guard: the same body repeated vs varied bodies, windows, and refusing."""

from __future__ import annotations

from decimal import Decimal

from tests.guards.agent import Agent, ctx, request
from tokenfuse.config import LoopGuardConfig
from tokenfuse.guards.base import Finding, Prompt
from tokenfuse.guards.loop import LoopGuard
from tokenfuse.limits.context import RequestContext
from tokenfuse.usage import Usage

COST = Decimal("0.25")


def guard(**cfg: object) -> LoopGuard:
    return LoopGuard(LoopGuardConfig.model_validate({"repeats": 3, "window": "10m", **cfg}))


def prompt(agent: Agent) -> Prompt:
    info, raw = request(agent.body())
    return Prompt(info.body, raw)


def send(g: LoopGuard, p: Prompt, now: float, c: RequestContext | None = None) -> Finding | None:
    return g.observe(c or ctx(), p, Usage(input_uncached=1000), COST, None, now)


def test_the_same_body_repeated_is_a_loop() -> None:
    g, p = guard(), prompt(Agent())
    first, second, f = (send(g, p, t) for t in (0, 10, 20))
    assert first is None and second is None
    assert f is not None and f.guard == "loop" and f.subject == "session s1"
    assert f.data["repeats"] == 3 and Decimal(f.data["spent_usd"]) == 3 * COST
    assert "arrived 3 times within 10m" in f.message


def test_a_progressing_agent_is_not_a_loop() -> None:
    g, agent = guard(), Agent()
    out = []
    for i in range(10):
        out.append(send(g, prompt(agent), float(i)))
        agent.step(f"answer {i}")
    assert out == [None] * 10


def test_repeats_outside_the_window_do_not_count() -> None:
    g, p = guard(), prompt(Agent())
    assert [send(g, p, t) for t in (0, 400, 800, 1200)] == [None] * 4  # never 3 within 600 s
    assert send(g, p, 1300) is not None  # 800, 1200, 1300


def test_sessions_and_keys_are_separate_subjects() -> None:
    g, p = guard(), prompt(Agent())
    for i, session in enumerate(("a", "b", "c", "d")):
        assert send(g, p, float(i), ctx(session=session)) is None
    no_session = ctx(session=None)
    send(g, p, 10, no_session)
    send(g, p, 11, no_session)
    f = send(g, p, 12, no_session)
    assert f is not None and f.subject == "key alice-droid"


def test_refuse_stops_the_repeat_before_it_is_served() -> None:
    g, p = guard(action="refuse"), prompt(Agent())
    assert g.refuses
    assert g.check(ctx(), p, 0) is None
    send(g, p, 0)
    assert g.check(ctx(), p, 1) is None
    send(g, p, 1)
    refusal = g.check(ctx(), p, 2)
    assert refusal is not None and refusal.severity == "critical"
    assert "this one was refused" in refusal.message and "Do not retry" in refusal.message
    assert Decimal(refusal.data["spent_usd"]) == 2 * COST
    # A different body in the same session still goes through.
    assert g.check(ctx(), prompt(Agent(task="something else")), 3) is None
    # And the same body again once the window has passed.
    assert g.check(ctx(), p, 2 + 600) is None


def test_alert_mode_never_refuses() -> None:
    g, p = guard(), prompt(Agent())
    for t in range(5):
        send(g, p, float(t))
        assert g.check(ctx(), p, float(t)) is None
