"""ASR against attack budget (the robustness metrics' ``asr_curve``), drawn as SVG for the site:
one line per submission and target (latest run), one panel per suite; the base model's Pre-ASR
(the reference) as a dashed line. Every label is escaped."""

from __future__ import annotations

from html import escape as e

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def curves(df) -> list[dict]:
    """``[{suite, submission, target, unit, points: [(budget, asr)], base}]`` from the latest
    records of the ``asr`` metric."""
    out = []
    rows = df[(df["latest"]) & (df["metric"] == "asr")]
    for _, r in rows.iterrows():
        d = r["_details"] or {}
        pts = [(float(c["budget"]), float(c["asr"])) for c in d.get("asr_curve") or [] if c.get("asr") == c.get("asr")]
        if pts:
            out.append({"suite": r["suite"], "submission": r["submission"], "target": r["target"], "unit": d.get("budget_unit") or "budget",
                        "points": pts, "base": r["base_value"]})
    return out


def asr_curve_svg(items: list[dict], title: str = "ASR against attack budget") -> str:
    W, H, L, R, T, B = 640, 300, 56, 180, 28, 44
    suites = sorted({c["suite"] for c in items})
    panels = []
    for sid in suites:
        cs = [c for c in items if c["suite"] == sid]
        xmax = max(p[0] for c in cs for p in c["points"]) or 1.0
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
            s.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="2"><title>{e(c["submission"])} / {e(c["target"])}</title></polyline>')
            if isinstance(c["base"], (int, float)) and c["base"] == c["base"]:
                s.append(f'<line x1="{L}" x2="{W - R}" y1="{y(c["base"]):.1f}" y2="{y(c["base"]):.1f}" stroke="{col}" stroke-dasharray="4 3" opacity="0.6"/>')
            s.append(f'<text x="{W - R + 8}" y="{T + 14 * i + 4}" fill="{col}">{e(c["submission"])} / {e(c["target"])}</text>')
        s.append("</svg>")
        panels.append("".join(s))
    return "\n".join(panels)
