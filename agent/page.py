"""GET /: one self-contained HTML page (no external assets) with each repo and a timeline of checks."""
from __future__ import annotations

import math
from html import escape

COLOURS = {"cloned": "#2b8a3e", "updated": "#37b24d", "reset": "#f08c00", "up-to-date": "#a5d8a5",
           "blocked": "#e8590c", "error": "#c92a2a"}
REFRESH = 10  # seconds
BAR_W, BAR_GAP, SVG_H = 8, 2, 48


def render_page(report: dict, history_of, now_text: str) -> bytes:
    """report: the /status document; history_of(name) -> recent history rows, newest first."""
    cards = [_card(r, history_of(r["name"])) for r in report["repos"]]
    legend = " ".join(f'<span class="key"><i style="background:{c}"></i>{escape(k)}</span>'
                      for k, c in COLOURS.items())
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sync-agent status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #212529; background: #f8f9fa; }}
h1 {{ font-size: 1.3em; margin: 0 0 .2em; }}
.sub {{ color: #666; margin-bottom: 1em; }}
.card {{ background: #fff; border: 1px solid #dee2e6; border-radius: 6px; padding: .8em 1em; margin: 0 0 1em; }}
.card h2 {{ font-size: 1.1em; margin: 0 0 .4em; }}
.ok {{ color: #2b8a3e; }} .bad {{ color: #c92a2a; }} .warn {{ color: #e8590c; }}
table {{ border-collapse: collapse; }}
td {{ padding: 1px 1em 1px 0; vertical-align: top; }}
td:first-child {{ color: #666; }}
code {{ font: 13px ui-monospace, monospace; }}
.key {{ margin-right: 1em; white-space: nowrap; }}
.key i {{ display: inline-block; width: .8em; height: .8em; margin-right: .3em; border-radius: 2px; }}
svg {{ display: block; margin-top: .5em; background: #f1f3f5; border-radius: 3px; }}
</style></head>
<body>
<h1>sync-agent</h1>
<div class="sub">{len(report["repos"])} repositories &middot; {escape(now_text)} &middot; refreshes every {REFRESH} s</div>
<div class="sub">{legend}</div>
{"".join(cards) or "<p>No repositories configured.</p>"}
</body></html>
"""
    return html.encode("utf-8")


def _card(r: dict, hist: list) -> str:
    result = r.get("last_result") or "not checked yet"
    cls = "bad" if result.startswith("error") else "warn" if result.startswith("blocked") else "ok"
    rows = [
        ("branch", escape(r.get("branch") or "(default)")),
        ("source", escape(str(r.get("source") or ""))),
        ("path", f"<code>{escape(r.get('path') or '')}</code>"),
        ("local", f"<code>{escape((r.get('local_sha') or '-')[:12])}</code>"),
        ("remote", f"<code>{escape((r.get('remote_sha') or '-')[:12])}</code>"),
        ("last check", escape(r.get("last_check") or "-")),
        ("result", f'<span class="{cls}">{escape(result)}</span>'),
        ("failures in a row", str(r.get("failures_in_a_row") or 0)
         + (f" since {escape(r['failing_since'])}" if r.get("failing_since") else "")),
        ("next run", escape(r.get("next_run") or "-")),
    ]
    for key in ("backup", "hook", "last_error"):
        if r.get(key) and r.get(key) not in result:
            rows.append((key.replace("_", " "), escape(r[key])))
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return (f'<div class="card"><h2>{escape(r["name"])}</h2><table>{table}</table>'
            f'{_timeline(hist)}</div>')


def _timeline(hist: list) -> str:
    """Recent checks, oldest left: colour = result, height = duration (log scale)."""
    if not hist:
        return '<svg width="200" height="16" role="img" aria-label="no checks yet"></svg>'
    items = list(reversed(hist))
    width = len(items) * (BAR_W + BAR_GAP)
    bars = []
    for i, h in enumerate(items):
        secs = max(float(h.get("seconds") or 0), 0.001)
        frac = min(1.0, max(0.12, (math.log10(secs) + 3) / 5))  # 1 ms .. 100 s
        bh = round(frac * (SVG_H - 4))
        colour = COLOURS.get(h.get("result"), "#868e96")
        tip = (f"{h.get('at')} {h.get('trigger')} {h.get('result')} {secs * 1000:.0f} ms"
               + (f" x{h['count']}" if (h.get("count") or 1) > 1 else "")
               + (f": {h['detail']}" if h.get("detail") else ""))
        bars.append(f'<rect x="{i * (BAR_W + BAR_GAP)}" y="{SVG_H - bh}" width="{BAR_W}" height="{bh}" '
                    f'fill="{colour}"><title>{escape(tip)}</title></rect>')
    return (f'<svg width="{width}" height="{SVG_H}" viewBox="0 0 {width} {SVG_H}" role="img" '
            f'aria-label="recent checks">{"".join(bars)}</svg>')
