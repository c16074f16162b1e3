"""The site's figures, hand-written SVG: the erasure / retention trade-off scatter (with 95% error
bars) and the ASR-against-attack-budget curves, one panel per suite.

Why not matplotlib or Vega-Lite (altair): README, section "Leaderboard" (decided when error bars
and ASR curves arrived). In short: no dependency for the 2-core CI, bytes that depend on the
inputs alone (the tests compare output), every string from a submission through one escape
function (``esc``), no script needed to view the figures (offline, from disk), and the
``data-kind`` attributes and ``<title>`` tooltips the target-kind filter and readers use."""

from __future__ import annotations

import html
import math

from harness.site.aggregate import ERASURE_METRIC, RETENTION_METRICS

KIND_COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed"]
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def esc(s) -> str:
    """The one escape of the figures: text and attribute values (quotes too)."""
    return html.escape(str(s), quote=True)


def markup(svg: str):
    """An SVG made here, to be inlined by Jinja2 as is (every label escaped when it was drawn)."""
    from markupsafe import Markup

    return Markup(svg)  # noqa: S704 - built by tradeoff_svg / asr_curve_svg, every label escaped there


def error_bar_lines(p: dict, X, Y, colour: str) -> list[str]:
    out = []
    cx, cy = X(p["x"]), Y(p["y"])
    if p.get("x_ci"):
        a, b = X(p["x_ci"][0]), X(p["x_ci"][1])
        out.append(f'<path class="errorbar" d="M{a:.1f} {cy:.1f} H{b:.1f} M{a:.1f} {cy - 4:.1f} V{cy + 4:.1f} M{b:.1f} {cy - 4:.1f} V{cy + 4:.1f}" stroke="{colour}" stroke-width="1.2" fill="none"/>')
    if p.get("y_ci"):
        a, b = Y(p["y_ci"][0]), Y(p["y_ci"][1])
        out.append(f'<path class="errorbar" d="M{cx:.1f} {a:.1f} V{b:.1f} M{cx - 4:.1f} {a:.1f} H{cx + 4:.1f} M{cx - 4:.1f} {b:.1f} H{cx + 4:.1f}" stroke="{colour}" stroke-width="1.2" fill="none"/>')
    return out


MAX_LABELS = 200  # beyond this many points the figure names them in tooltips only


def tradeoff_svg(points: list[dict], title: str = "Erasure vs retention") -> str:
    """A self-contained SVG scatter plot (every label escaped): x = UA (erasure), y = mean of
    IRA and CRA (retention); coincident points share one marker and a stacked label."""
    e = esc
    W, H = 760, 480
    L, R, T, B = 64, 150, 44, 56
    pw, ph = W - L - R, H - T - B
    # y (retention) zooms to the points' range: the interesting differences are often small
    ymin = min([p["y"] for p in points] or [0.0])
    lo = max(0.0, math.floor((ymin - 0.02) * 10) / 10)
    span = 1.0 - lo
    ystep = 0.05 if span <= 0.2 + 1e-9 else 0.1 if span <= 0.5 + 1e-9 else 0.2
    pad = 12  # points on the edges (UA 0 or 1) stay inside the frame
    X = lambda x: L + pad + max(0.0, min(1.0, x)) * (pw - 2 * pad)
    Y = lambda y: T + pad + (1 - (max(lo, min(1.0, y)) - lo) / span) * (ph - 2 * pad)
    kinds = sorted({p["kind"] for p in points if not p["base"]})
    colour = {k: KIND_COLOURS[i % len(KIND_COLOURS)] for i, k in enumerate(kinds)}
    ret = sorted({m for p in points for m in p["retention"]}) or list(RETENTION_METRICS)
    ylabel = f"retention: mean({', '.join(m.upper() for m in ret)})"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-labelledby="tradeoff-title" class="tradeoff" font-family="system-ui, sans-serif" font-size="12">',
           f'<title id="tradeoff-title">{e(title)}: {ERASURE_METRIC.upper()} against {e(ylabel)}, one point per submission and target</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{L + pw}" y="{T - 16}" text-anchor="end" fill="#047857" font-size="11">better ↗</text>']
    for i in range(6):
        v = i / 5
        out.append(f'<line x1="{X(v):.1f}" y1="{T}" x2="{X(v):.1f}" y2="{T + ph}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{X(v):.1f}" y="{T + ph + 16}" text-anchor="middle" fill="#4b5563">{v:.1f}</text>')
    n_y = round(span / ystep)
    for i in range(n_y + 1):
        v = lo + i * ystep
        out.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{L + pw}" y2="{Y(v):.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{L - 8}" y="{Y(v) + 4:.1f}" text-anchor="end" fill="#4b5563">{v:.2f}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#9ca3af"/>')
    out.append(f'<text x="{L + pw / 2:.1f}" y="{H - 16}" text-anchor="middle" fill="#111827">erasure: {e(ERASURE_METRIC.upper())} (unlearning accuracy) →</text>')
    out.append(f'<text transform="translate(18 {T + ph / 2:.1f}) rotate(-90)" text-anchor="middle" fill="#111827">{e(ylabel)} →</text>')
    out.append(f'<text x="{L}" y="{T - 16}" fill="#111827" font-size="14" font-weight="600">{e(title)}</text>')
    # group coincident points
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((round(X(p["x"])), round(Y(p["y"]))), []).append(p)
    labels = []
    for (gx, gy), ps in sorted(groups.items()):
        kinds_here = " ".join(sorted({p["kind"] for p in ps}))
        tip = "; ".join(f"{p['submission']} · {p['target']} ({p['suite']}): {ERASURE_METRIC.upper()} {p['x']:.3f}, retention {p['y']:.3f}" for p in ps)
        out.append(f'<g class="point" data-kind="{e(kinds_here)}"><title>{e(tip)}</title>')
        for p in ps:
            cx, cy = X(p["x"]), Y(p["y"])
            if p["base"]:
                out.append(f'<path d="M{cx:.1f} {cy - 7:.1f} L{cx + 7:.1f} {cy:.1f} L{cx:.1f} {cy + 7:.1f} L{cx - 7:.1f} {cy:.1f} Z" fill="none" stroke="#374151" stroke-width="1.5" data-kind="{e(p["kind"])}"/>')
            else:
                out.extend(error_bar_lines(p, X, Y, colour[p["kind"]]))
                out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5.5" fill="{colour[p["kind"]]}" fill-opacity="0.85" stroke="#ffffff" data-kind="{e(p["kind"])}"/>')
        out.append("</g>")
        for p in ps:
            labels.append({"x": gx, "y": gy, "text": f"{p['submission']} · {p['target']}", "kind": p["kind"], "base": p["base"]})
    # labels to the right of the plot area's points; stacked and pushed apart vertically
    placed: list[dict] = []
    if len(labels) > MAX_LABELS:  # unreadable, and placing them is quadratic: the points keep their tooltips
        out.append(f'<text x="{L + pw:.1f}" y="{T + ph + 32}" text-anchor="end" fill="#6b7280" font-size="11">{len(labels)} points: names on hover</text>')
        labels = []
    for lab in sorted(labels, key=lambda d: (d["y"], d["x"], d["text"])):
        right = lab["x"] < L + pw * 0.55
        lab["anchor"] = "start" if right else "end"
        lab["tx"] = lab["x"] + 10 if right else lab["x"] - 10
        ty = lab["y"] + 4
        for q in placed:
            if q["anchor"] == lab["anchor"] and abs(q["tx"] - lab["tx"]) < 160 and abs(q["ty"] - ty) < 14:
                ty = q["ty"] + 14
        lab["ty"] = ty
        placed.append(lab)
    for lab in placed:
        fill = "#374151" if lab["base"] else colour.get(lab["kind"], "#111827")
        if abs(lab["ty"] - 4 - lab["y"]) > 6:  # pushed away from its point: a leader line
            out.append(f'<line x1="{lab["x"]:.1f}" y1="{lab["y"]:.1f}" x2="{lab["tx"] + (-3 if lab["anchor"] == "start" else 3):.1f}" y2="{lab["ty"] - 4:.1f}" stroke="#9ca3af" stroke-width="0.8" data-kind="{e(lab["kind"])}"/>')
        out.append(f'<text x="{lab["tx"]:.1f}" y="{lab["ty"]:.1f}" text-anchor="{lab["anchor"]}" fill="{fill}" data-kind="{e(lab["kind"])}" class="label">{e(lab["text"])}</text>')
    # legend
    lx, ly = L + pw + 20, T + 8
    out.append(f'<text x="{lx}" y="{ly}" fill="#111827" font-weight="600">target kind</text>')
    for i, k in enumerate(kinds):
        out.append(f'<circle cx="{lx + 6}" cy="{ly + 18 + i * 18}" r="5.5" fill="{colour[k]}"/><text x="{lx + 18}" y="{ly + 22 + i * 18}" fill="#111827">{e(k)}</text>')
    by = ly + 18 + len(kinds) * 18
    out.append(f'<path d="M{lx + 6} {by - 7} L{lx + 13} {by} L{lx + 6} {by + 7} L{lx - 1} {by} Z" fill="none" stroke="#374151" stroke-width="1.5"/><text x="{lx + 18}" y="{by + 4}" fill="#111827">base model</text>')
    if not points:
        out.append(f'<text x="{L + pw / 2:.1f}" y="{T + ph / 2:.1f}" text-anchor="middle" fill="#6b7280">no {e(ERASURE_METRIC.upper())} / retention records</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def asr_curve_svg(items: list[dict], title: str = "ASR against attack budget") -> str:
    """One SVG panel per suite (joined by newlines; '' without curves): a line per submission and
    target with each point's 95% interval as a bar where the results give one, the base model's
    Pre-ASR dashed in the same colour, a legend of the lines."""
    e = esc
    W, H, L, R, T, B = 640, 300, 56, 180, 28, 44
    suites = sorted({c["suite"] for c in items})
    panels = []
    for sid in suites:
        cs = [c for c in items if c["suite"] == sid]
        xmax = max(p[0] for c in cs for p in c["points"]) or 1.0  # budgets >= 0 (aggregate.curves)
        x = lambda b: L + (W - L - R) * b / xmax  # noqa: E731
        y = lambda a: T + (H - T - B) * (1 - a)  # noqa: E731
        s = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" class="asr-curve" font-family="system-ui, sans-serif" font-size="12">',
             f"<title>{e(title)}: {e(sid)}</title>", f'<text x="{L}" y="16" font-weight="bold">{e(sid)}</text>',
             f'<line x1="{L}" y1="{y(0)}" x2="{W - R}" y2="{y(0)}" stroke="#333"/><line x1="{L}" y1="{y(0)}" x2="{L}" y2="{y(1)}" stroke="#333"/>']
        for a in (0, 0.25, 0.5, 0.75, 1):
            s.append(f'<text x="{L - 6}" y="{y(a) + 4}" text-anchor="end">{a:g}</text>')
        s.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">{e(cs[0]["unit"])}</text>')
        s.append(f'<text x="{L}" y="{H - 26}" text-anchor="middle">0</text><text x="{W - R}" y="{H - 26}" text-anchor="middle">{xmax:g}</text>')
        s.append(f'<text transform="rotate(-90)" x="{-(T + H - B) / 2}" y="16" text-anchor="middle">ASR</text>')
        for i, c in enumerate(cs):
            col = COLOURS[i % len(COLOURS)]
            path = " ".join(f"{x(b):.1f},{y(a):.1f}" for b, a in c["points"])
            k = e(c.get("kind") or "other")  # the target-kind filter dims the other kinds' lines
            s.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="2" data-kind="{k}"><title>{e(c["submission"])} / {e(c["target"])}</title></polyline>')
            for b, lo, hi in c.get("bars") or []:  # each point's 95% interval
                s.append(f'<line class="ci-bar" x1="{x(b):.1f}" x2="{x(b):.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" stroke="{col}" stroke-width="1" opacity="0.5" '
                         f'data-kind="{k}"><title>{e(c["submission"])} / {e(c["target"])} at {b:g}: 95% interval [{lo:.2f}, {hi:.2f}]</title></line>')
            if isinstance(c["base"], (int, float)) and c["base"] == c["base"]:
                s.append(f'<line x1="{L}" x2="{W - R}" y1="{y(c["base"]):.1f}" y2="{y(c["base"]):.1f}" stroke="{col}" stroke-dasharray="4 3" opacity="0.6" data-kind="{k}"/>')
            s.append(f'<text x="{W - R + 8}" y="{T + 14 * i + 4}" fill="{col}" data-kind="{k}">{e(c["submission"])} / {e(c["target"])}</text>')
        s.append("</svg>")
        panels.append("".join(s))
    return "\n".join(panels)
