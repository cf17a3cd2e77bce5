"""The escalation note for a flagged account: what happened, what to check, what to stop."""

from __future__ import annotations

from tokenfuse.billing.detect import DRIVER_CAUSE, Runaway

_CHECK = {
    "input": [
        "Bedrock invocation logs (CloudWatch / S3) for this account: requests whose input token count grows call after call",
        "agent or retry loops that re-send the whole conversation; missing conversation truncation or summarisation",
        "the caller: which role / principal made the InvokeModel and Converse calls (CloudTrail)",
    ],
    "output": [
        "max_tokens and thinking / reasoning budgets raised in a recent deploy",
        "responses that end with stop reason max_tokens and are retried",
        "the caller: which role / principal made the calls (CloudTrail)",
    ],
    "cache_write": [
        "cache_control / cachePoint placement: a timestamp, request id or shuffled tool list before the cache point",
        "cache read tokens on the same model: they should be several times the writes",
        "a 1-hour cache TTL requested where 5 minutes would do",
    ],
    "billing_lag": [
        "`tokenfuse reconcile --ledger <store> --billing <export> --account <id>`: a billing_lag finding with this lump day "
        "confirms the bill charged late, not more",
        "the days before the lump: the bill shows no Bedrock usage while the gateway ledger (or CloudWatch invocation "
        "metrics) shows the usual traffic",
        "the next export refresh: the lag usually settles within a day or two",
    ],
    "mixed": [
        "request counts per caller (CloudTrail) against the previous weeks: new traffic, a new tenant, a retry storm",
        "a deploy or schedule change on the first flagged day",
    ],
}
_STOP = {
    "input": "pause the looping job or agent; cap the conversation length it may send",
    "output": "roll back the max_tokens / reasoning-budget change; cap retries",
    "cache_write": "disable prompt caching for this caller until the cache prefix is stable",
    "mixed": "throttle or pause the largest caller; set the Bedrock budget below",
    "billing_lag": "nothing yet: no usage change is implied; do not roll back deploys or cap tokens for this spike",
}


def note(r: Runaway) -> str:
    ratio = f"{r.spike_ratio:.1f}x" if r.spike_ratio is not None else "n/a (no baseline spend)"
    compute = (
        "flat: consistent with late billing of the usual traffic"
        if r.compute_flat and r.driver == "billing_lag"
        else "flat while tokens rose: the runaway fingerprint (the spend is the model calls, not more work)"
        if r.compute_flat
        else f"changed too ({r.baseline_compute_avg:.2f} -> {r.recent_compute_avg:.2f} USD/day): "
        "the workload itself may have grown"
    )
    title = (
        f"## Escalation: billing-lag lump (not a runaway) in account {r.account}"
        if r.driver == "billing_lag"
        else f"## Escalation: runaway Bedrock inference in account {r.account}"
    )
    lines = [
        title,
        "",
        f"- Days: {', '.join(d.isoformat() for d in r.days)} (flagged: {', '.join(d.isoformat() for d in r.flagged_days) or 'window mean only'})",
        f"- Recent average: {r.recent_avg:.2f} USD/day",
        f"- Baseline average: {r.baseline_avg:.2f} USD/day (sigma {r.baseline_stddev:.2f}, {r.baseline_days} days)",
        f"- Spike ratio: {ratio}, {r.sigma_distance:.1f} sigma above the baseline",
        f"- Likely cause: {DRIVER_CAUSE[r.driver]}",
        f"- Compute (EC2/ECS/Lambda): {compute}",
        "",
        "What to check:",
        *[f"1. {c}" for c in _CHECK[r.driver]],
        "",
        f"What to stop: {_STOP[r.driver]}.",
        "",
    ]
    return "\n".join(lines)
