#!/usr/bin/env python3
"""Draws the chart's Grafana dashboard (charts/msa-operator/files/dashboard.json) from a real
Prometheus, panel by panel with the dashboard's own queries and layout, as one HTML page for
the README's picture: Grafana itself cannot be installed or built on this machine.

    hack/dashboard-picture.py http://127.0.0.1:9090 charts/msa-operator/files/dashboard.json \
        --minutes 3 > dashboard.html
    chromium --headless --screenshot=dashboard.png --window-size=1400,1500 dashboard.html

Dashboard variables: $namespace matches every namespace (a local run has none);
$__rate_interval is 15s (four scrapes at the 1 s interval used for the picture, as Grafana
would pick). A panel whose queries return nothing says "no data", as Grafana does.
"""
import argparse
import html
import json
import time
import urllib.parse
import urllib.request

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac"]
WIDTH_UNIT, HEIGHT_UNIT = 56, 30


def query_range(base, expr, start, end, step):
    url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)["data"]["result"]


def label(metric):
    return ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__") or "value"


def chart(series, width, height):
    """An SVG line chart of [(name, [(t, v)])] with its y range and a legend."""
    points = [(t, v) for _, values in series for t, v in values]
    if not points:
        return f'<div class="empty" style="height:{height}px">no data</div>'
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    top = max(max(p[1] for p in points), 1e-9)
    plot_h = height - 20

    def xy(t, v):
        x = 40 + (width - 50) * ((t - t0) / (t1 - t0) if t1 > t0 else 0)
        return f"{x:.1f},{plot_h - (plot_h - 10) * v / top:.1f}"

    lines = [
        f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.6" '
        f'points="{" ".join(xy(t, v) for t, v in values)}"/>'
        for i, (_, values) in enumerate(series)]
    axis = (f'<text x="2" y="14">{top:.3g}</text><text x="2" y="{plot_h}">0</text>'
            f'<line x1="40" y1="{plot_h}" x2="{width - 10}" y2="{plot_h}" stroke="#ccc"/>')
    legend = "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(name)}</span>'
        for i, (name, _) in enumerate(series[:8]))
    more = f"<span>… {len(series) - 8} more</span>" if len(series) > 8 else ""
    return (f'<svg width="{width}" height="{height}">{axis}{"".join(lines)}</svg>'
            f'<div class="legend">{legend}{more}</div>')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("prometheus")
    parser.add_argument("dashboard")
    parser.add_argument("--minutes", type=float, default=3)
    args = parser.parse_args()
    dashboard = json.load(open(args.dashboard))
    end = time.time()
    start = end - args.minutes * 60
    panels = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        series = []
        for target in panel.get("targets", []):
            expr = (target["expr"].replace('=~"$namespace"', '=~".*"')
                    .replace("$__rate_interval", "15s"))
            for result in query_range(args.prometheus, expr, start, end, 2):
                values = [(float(t), float(v)) for t, v in result["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                series.append((label(result["metric"]), values))
        width, height = grid["w"] * WIDTH_UNIT - 16, grid["h"] * HEIGHT_UNIT - 60
        panels.append(
            f'<div class="panel" style="left:{grid["x"] * WIDTH_UNIT}px;top:{grid["y"] * HEIGHT_UNIT}px;'
            f'width:{grid["w"] * WIDTH_UNIT - 8}px;height:{grid["h"] * HEIGHT_UNIT - 8}px">'
            f'<h4>{html.escape(panel["title"])}</h4>{chart(series, width, height)}</div>')
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) * HEIGHT_UNIT
    print(f"""<!doctype html><meta charset="utf-8"><style>
body {{ font: 12px sans-serif; margin: 12px; background: #f4f5f5; }}
.board {{ position: relative; height: {bottom}px; }}
.panel {{ position: absolute; background: #fff; border: 1px solid #ddd; border-radius: 3px;
  padding: 4px 6px; overflow: hidden; box-sizing: border-box; }}
h4 {{ margin: 2px 0 4px; font-size: 13px; }}
svg text {{ font-size: 10px; fill: #666; }}
.legend span {{ margin-right: 10px; white-space: nowrap; display: inline-block; }}
.legend i {{ display: inline-block; width: 10px; height: 3px; margin: 0 3px 3px 0; }}
.empty {{ color: #999; display: flex; align-items: center; justify-content: center; }}
</style>
<h3>{html.escape(dashboard["title"])} — the chart's dashboard, its queries run on Prometheus
scraping a local run (last {args.minutes:g} minutes)</h3>
<div class="board">{"".join(panels)}</div>""")


main()
