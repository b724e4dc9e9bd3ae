#!/usr/bin/python3
"""Prints a specprune_eval JSON file (--json) as the Markdown table used in docs/BENCHMARKS.md.

Usage: bench/eval_table.py RESULT.json
"""
import json
import sys


def dash(value, fmt):
    return "–" if value is None else fmt.format(value)


def row(r, bold=False):
    cells = [
        r["method"],
        r["suite"],
        f'{r["successes"]}/{r["episodes"]}'
        + (f' ({100 * r["success_rate"]:.1f}%)' if bold else ""),
        f'{100 * r["mean_vision_retention"]:.1f}%',
        f'{100 * r["flops_ratio"]:.1f}%',
        f'{r["speedup_vs_none"]:.2f}x',
        dash(r["action_deviation"], "{:.3f}"),
        dash(r["global_recall"], "{:.2f}"),
    ]
    if bold:
        cells = [f"**{c}**" if i < 3 else c for i, c in enumerate(cells)]
    return "| " + " | ".join(cells) + " |"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        d = json.load(f)
    print("| method | suite | success | retention (mean over layers) | FLOPs % "
          "| speedup vs none | action deviation | V_global recall |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for r in d["results"]:
        print(row(r))
    summary = d["summary"]
    for r in summary if isinstance(summary, list) else summary.values():
        print(row(dict(r, suite=r.get("suite", "all")), bold=True))


if __name__ == "__main__":
    main()
