"""Lint and render a chart with Helm v4's engine (PyPI helm-python-sdk, no
helm binary needed) and print the result as JSON for the chart tests:
{"lint": {...}, "manifests": {path: yaml}, "crds": [{"name", "filename", "data"}]}.

Usage: python charts/render.py CHART_DIR [VALUES_JSON]
"""

import json
import sys

import helm_python as helm


def main() -> None:
    chart_dir = sys.argv[1]
    values = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    report = helm.lint(chart_dir, values, strict=True, namespace="ride-system")
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name="ride", namespace="ride-system", is_install=True)
        crds = chart.crds
    json.dump({"lint": report, "manifests": manifests, "crds": crds}, sys.stdout)


if __name__ == "__main__":
    main()
