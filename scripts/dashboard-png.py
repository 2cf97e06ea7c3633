#!/usr/bin/env python3
"""Render the chart's Grafana dashboard to one PNG from any Prometheus, by
running every panel's queries through Prometheus's range-query API (Grafana
itself is not needed). Needs matplotlib (pip install matplotlib).

    scripts/dashboard-png.py --prometheus http://127.0.0.1:9090 \\
        --namespace team-a --training ride-tiny-2e --minutes 360 --out dashboard.png

The template variables are substituted as Grafana does: $namespace,
$training, and $__rate_interval (--rate-interval, default 1m).
"""

import argparse
import json
import math
import pathlib
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DASHBOARD = (
    pathlib.Path(__file__).resolve().parent.parent
    / "charts/ride-operator/dashboards/ride-trainings.json"
)


def query_range(base, expr, start, end, step):
    """The result matrix of a range query, or raise with Prometheus's error."""
    qs = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query_range?{qs}", timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def legend(fmt, labels):
    """Grafana's legendFormat: {{label}} replaced by the series' label."""
    out = fmt or ""
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out or json.dumps(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--training", required=True, help="RideTraining name")
    ap.add_argument("--minutes", type=float, default=60, help="window ending now")
    ap.add_argument("--step", default="15s", help="range-query resolution")
    ap.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    ap.add_argument("--dashboard", default=str(DASHBOARD))
    ap.add_argument("--out", required=True, help="PNG file to write")
    a = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib is missing; run: pip install matplotlib")

    dash = json.loads(pathlib.Path(a.dashboard).read_text())
    panels = dash["panels"]
    end = time.time()
    start = end - a.minutes * 60
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(16, 2.9 * rows), squeeze=False)
    fig.suptitle(
        f"{dash['title']}: {a.namespace}/{a.training} "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(end))}, last {a.minutes:g} min)",
        fontsize=14,
    )
    failed = []
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(panel["title"], fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        drawn = 0
        for t in panel.get("targets", []):
            expr = (
                t["expr"]
                .replace("$namespace", a.namespace)
                .replace("$training", a.training)
                .replace("$__rate_interval", a.rate_interval)
            )
            try:
                series = query_range(a.prometheus, expr, start, end, a.step)
            except (RuntimeError, urllib.error.URLError) as e:
                failed.append(str(e))
                continue
            for s in series:
                xs = [(float(v[0]) - end) / 60 for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                ax.plot(xs, ys, label=legend(t.get("legendFormat"), s["metric"]), lw=1.2)
                drawn += 1
        if drawn:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"minutes before now ({panel['fieldConfig']['defaults'].get('unit', '')})", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(a.out, dpi=80)
    print(f"wrote {a.out} ({len(panels)} panels)")
    if failed:
        sys.exit("error: queries failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
