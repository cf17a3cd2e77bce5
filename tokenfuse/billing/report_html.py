"""A self-contained HTML report: inline SVG charts and tables, no scripts, no CDN."""

from __future__ import annotations

from decimal import Decimal
from html import escape

from tokenfuse.billing.detect import DaySeries, Detection, Runaway

_W, _H, _PAD = 720, 240, 44


def _chart(s: DaySeries, r: Runaway) -> str:
    n = len(s.days)
    top = max([*s.cost, r.threshold, r.baseline_avg + r.baseline_stddev, Decimal(1)]) * Decimal("1.1")

    def x(i: int) -> float:
        return _PAD + (_W - 2 * _PAD) * (i + 0.5) / max(n, 1)

    def y(v: Decimal) -> float:
        return float(_H - _PAD - (_H - 2 * _PAD) * (v / top))

    band_lo = max(r.baseline_avg - r.baseline_stddev, Decimal(0))
    band_hi = r.baseline_avg + r.baseline_stddev
    bar_w = max((_W - 2 * _PAD) / max(n, 1) * 0.7, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" '
        f'aria-label="daily inference cost, account {escape(r.account)}">',
        f'<rect x="{_PAD}" y="{y(band_hi):.1f}" width="{_W - 2 * _PAD}" height="{max(y(band_lo) - y(band_hi), 1):.1f}" '
        'fill="#dbeafe"><title>baseline mean ± 1σ</title></rect>',
        f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y(r.baseline_avg):.1f}" y2="{y(r.baseline_avg):.1f}" '
        'stroke="#2563eb" stroke-dasharray="4 3"><title>baseline mean</title></line>',
        f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y(r.threshold):.1f}" y2="{y(r.threshold):.1f}" '
        'stroke="#dc2626" stroke-dasharray="6 3"><title>threshold (mean + 2σ)</title></line>',
    ]
    flagged = set(r.flagged_days)
    for i, (d, v) in enumerate(zip(s.days, s.cost, strict=True)):
        colour = "#dc2626" if d in flagged else ("#f59e0b" if d in r.days else "#64748b")
        parts.append(
            f'<rect x="{x(i) - bar_w / 2:.1f}" y="{y(v):.1f}" width="{bar_w:.1f}" height="{max(_H - _PAD - y(v), 0):.1f}" '
            f'fill="{colour}"><title>{d.isoformat()}: {v:.2f} USD</title></rect>'
        )
    parts += [
        f'<text x="4" y="{y(top / Decimal("1.1")) + 4:.1f}" font-size="10">{top / Decimal("1.1"):.0f}</text>',
        f'<text x="4" y="{_H - _PAD + 4}" font-size="10">0</text>',
        f'<text x="{_PAD}" y="{_H - 10}" font-size="10">{s.days[0].isoformat() if s.days else ""}</text>',
        f'<text x="{_W - _PAD - 60}" y="{_H - 10}" font-size="10">{s.days[-1].isoformat() if s.days else ""}</text>',
        "</svg>",
    ]
    return "".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(det: Detection, title: str = "tokenfuse detect") -> str:
    sections = [f"<h1>{escape(title)}</h1>", f"<p>As of {det.as_of.isoformat()} (the first day not analysed).</p>"]
    for n in det.notes:
        sections.append(f"<p class=note>{escape(n)}</p>")
    if det.nothing_to_analyse:
        # Not "No account flagged": an export without inference rows was not judged at all.
        sections.append(f"<p class=statement><strong>{escape(det.nothing_to_analyse[0].upper() + det.nothing_to_analyse[1:])}."
                        "</strong></p>")
    sections.append("<h2>Runaway inference</h2>")
    if det.nothing_to_analyse:
        sections.append("<p>Not judged: no inference rows.</p>")
    elif not det.flagged:
        sections.append("<p>No account flagged.</p>")
    for r in det.flagged:
        ratio = f"{r.spike_ratio:.1f}x" if r.spike_ratio is not None else "n/a"
        sections.append(
            f"<h3>Account {escape(r.account)}: {ratio}, driver {escape(r.driver)}, "
            f"compute {'flat' if r.compute_flat else 'moved'}</h3>"
        )
        sections.append(_chart(det.series[r.account], r))
        sections.append(
            "<p class=legend>Bars: daily Bedrock inference cost (red: flagged day, amber: recent window). "
            "Blue band: baseline mean ± 1σ; red dashed line: mean + 2σ threshold.</p>"
        )
    sections.append("<h2>Findings</h2>")
    rows = [
        [r.account, "billing_lag" if r.driver == "billing_lag" else "runaway_inference",
         f"{r.recent_avg:.2f}/day vs {r.baseline_avg:.2f}/day",
         "run tokenfuse reconcile to confirm the late billing" if r.driver == "billing_lag" else r.driver]
        for r in det.flagged
    ]
    rows += [
        [c.account, "cache_miss", f"{c.model_label}: {c.cache_read_tokens:,.0f} read vs {c.uncached_input_tokens:,.0f} uncached",
         f"{c.wasted_usd:.2f} USD could have been saved"]
        for c in det.cache_misses
    ]
    rows += [
        [b.account, "budget_advice", f"{b.period}: {b.bedrock_spend_usd:.2f} USD on Bedrock",
         f"budget {b.monthly_budget_usd:.2f}/month (dev/test {b.dev_test_monthly_budget_usd:.2f})"]
        for b in det.budgets
    ]
    sections.append(_table(["account", "finding", "evidence", "action"], rows))
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#0f172a}table{border-collapse:collapse}"
        "td,th{border:1px solid #cbd5e1;padding:4px 8px;text-align:left;font-size:13px}"
        ".note{color:#92400e}.legend{font-size:12px;color:#475569}"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{style}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
