#!/usr/bin/env python3
"""Draws one trace as a waterfall (HTML), from Jaeger's JSON (`/api/traces/{id}`), for the
README's picture: Jaeger's own UI is not in the binary built from its Go module.

    hack/trace-picture.py trace.json > trace.html
    chromium --headless --screenshot=trace.png --window-size=1200,520 trace.html
"""
import html
import json
import sys

COLOURS = {"msa-gateway": "#4e79a7", "msa-order": "#f28e2b", "msa-user": "#59a14f",
           "msa-product": "#e15759"}


def main():
    trace = json.load(open(sys.argv[1]))["data"][0]
    services = {k: v["serviceName"] for k, v in trace["processes"].items()}
    spans = {s["spanID"]: s for s in trace["spans"]}
    children = {}
    roots = []
    for span in trace["spans"]:
        parent = next((r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"), None)
        if parent in spans:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    start = min(s["startTime"] for s in trace["spans"])
    end = max(s["startTime"] + s["duration"] for s in trace["spans"])
    total = max(end - start, 1)
    rows = []

    def walk(span, depth):
        tags = {t["key"]: t["value"] for t in span["tags"]}
        service = services[span["processID"]]
        left = 100.0 * (span["startTime"] - start) / total
        width = max(100.0 * span["duration"] / total, 0.3)
        kind = tags.get("span.kind", "")
        detail = tags.get("http.response.status_code", "")
        error = tags.get("error.type", "")
        rows.append(
            f'<tr><td class="name" style="padding-left:{8 + depth * 18}px">'
            f'<span class="dot" style="background:{COLOURS.get(service, "#999")}"></span>'
            f'<b>{html.escape(service)}</b> {html.escape(span["operationName"])}'
            f' <i>{html.escape(kind)}</i></td>'
            f'<td class="bar"><div style="margin-left:{left:.2f}%;width:{width:.2f}%;'
            f'background:{COLOURS.get(service, "#999")}"></div></td>'
            f'<td class="ms">{span["duration"] / 1000:.2f} ms {html.escape(str(detail))}'
            f'{" " + html.escape(error) if error else ""}</td></tr>')
        for child in sorted(children.get(span["spanID"], []), key=lambda s: s["startTime"]):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s["startTime"]):
        walk(root, 0)
    print(f"""<!doctype html><meta charset="utf-8"><style>
body {{ font: 13px/1.4 sans-serif; margin: 16px; }}
table {{ border-collapse: collapse; width: 100%; }}
td {{ border-bottom: 1px solid #eee; padding: 4px 6px; white-space: nowrap; }}
td.name {{ width: 38%; }} td.bar {{ width: 50%; }} td.ms {{ color: #555; }}
td.bar div {{ height: 12px; border-radius: 2px; }}
.dot {{ display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 5px; }}
i {{ color: #888; }}
</style>
<h3>Trace {html.escape(trace["traceID"])} — {len(trace["spans"])} spans, {total / 1000:.2f} ms
(received by Jaeger over OTLP from a local run)</h3>
<table>{''.join(rows)}</table>""")


main()
