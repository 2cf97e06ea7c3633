"""Mean ± sd over seeds of the runs experiments/digits.sh wrote.

Usage: python experiments/summarize.py OUT_DIR
Reads OUT_DIR/<model name>/seed<N>/eval.json (and router/eval.json).
"""

import json
import statistics
import sys
from pathlib import Path

ROWS = [
    ("CE", "digits_lt_resnet32_ce", False),
    ("LDAM-DRW", "digits_lt_resnet32_ldam_drw", False),
    ("RIDE, 2 experts", "digits_lt_resnet32_ride_2e", False),
    ("RIDE, 3 experts", "digits_lt_resnet32_ride_3e", False),
    ("RIDE, 3 experts + router", "digits_lt_resnet32_ride_3e", True),
]


def fmt(values, digits=1):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    out = Path(sys.argv[1])
    print("| method | seeds | overall | many | medium | few | expert disagreement (%) | experts / image | MFLOPs / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    per_seed, sweeps = [], []
    for label, name, router in ROWS:
        reports = []
        for seed_dir in sorted((out / name).glob("seed*")):
            f = seed_dir / ("router/eval.json" if router else "eval.json")
            if f.exists():
                reports.append(json.loads(f.read_text()))
        if not reports:
            continue
        col = lambda key: [r[key] for r in reports if r.get(key) is not None]
        disagreement = [sum(r["expert_disagreement"]) / len(r["expert_disagreement"])
                        for r in reports if r.get("expert_disagreement")]
        if router:
            experts = [r["routing"]["mean_experts"] for r in reports]
            gflops = [1e3 * r["routing"]["gflops"] for r in reports]
        else:
            experts = [float(len(r["per_expert_top1"])) for r in reports]
            gflops = []
        print(f"| {label} | {len(reports)} | {fmt(col('top1'))} | {fmt(col('many'))} | "
              f"{fmt(col('medium'))} | {fmt(col('few'))} | {fmt(disagreement)} | "
              f"{fmt(experts, 2)} | {fmt(gflops) if gflops else '-'} |")
        per_seed.append((label, [(r["top1"], r.get("few")) for r in reports]))
        if router:
            sweeps.append(reports)
    print()
    print("Per seed (overall / few):")
    for label, values in per_seed:
        print(f"- {label}: " + ", ".join(f"{o:.1f} / {f:.1f}" for o, f in values))
    for reports in sweeps:
        print()
        print("Router threshold sweep, mean over seeds (the all-experts point is threshold 0):")
        print()
        print("| threshold | overall | many | medium | few | experts / image | MFLOPs / image |")
        print("|---|---|---|---|---|---|---|")
        for i, point in enumerate(reports[0]["routing"]["sweep"]):
            col = lambda key: [r["routing"]["sweep"][i][key] for r in reports
                               if r["routing"]["sweep"][i].get(key) is not None]
            print(f"| {point['threshold']:.2f} | {fmt(col('top1'))} | {fmt(col('many'))} | "
                  f"{fmt(col('medium'))} | {fmt(col('few'))} | {fmt(col('mean_experts'), 2)} | "
                  f"{fmt([1e3 * g for g in col('gflops')])} |")


if __name__ == "__main__":
    main()
