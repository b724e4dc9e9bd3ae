#!/usr/bin/python3
"""Prints a specprune_eval JSON file (--json) as the Markdown table used in docs/BENCHMARKS.md,
then, when the file has per-episode results, a paired comparison of each method with `none`, and
when it has the failure analysis, the failed episodes by failure mode, and for a fixed task set
(--fixed_tasks N) the successes per task.

Usage: bench/eval_table.py RESULT.json [RESULT.json ...]

Several files (e.g. `--methods none` and one `--methods specprune --pruning FILE` run per config)
are read as one run when they share seed, episodes per suite and fixed_tasks, so the episodes
pair up; their non-`none` methods are labelled with the --pruning file (or the JSON file) name.
"""
import json
import math
import os
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
        dash(r["speedup_vs_none"], "{:.2f}x"),
        dash(r["action_deviation"], "{:.3f}"),
        dash(r["global_recall"], "{:.2f}"),
    ]
    if bold:
        cells = [f"**{c}**" if i < 3 else c for i, c in enumerate(cells)]
    return "| " + " | ".join(cells) + " |"


def mcnemar_p(b, c):
    """Exact two-sided McNemar p-value for b and c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def extra_table(columns, lines):
    """A method/suite table of numeric `columns` after a blank line; nothing without lines."""
    if lines:
        print()
        print("| method | suite | " + " | ".join(columns) + " |")
        print("|---|---|" + "--:|" * len(columns))
        print("\n".join(lines))


def paired(results):
    """Episodes only `none` solved / only the method solved, per suite (same seeds)."""
    base = {r["suite"]: r.get("episode_success") for r in results if r["method"] == "none"}
    lines = []
    for r in results:
        ref, mine = base.get(r["suite"]), r.get("episode_success")
        if r["method"] == "none" or not ref or not mine or len(ref) != len(mine):
            continue
        b = sum(1 for x, y in zip(ref, mine) if x and not y)
        c = sum(1 for x, y in zip(ref, mine) if y and not x)
        lines.append(f'| {r["method"]} | {r["suite"]} | {b} | {c} | {c - b:+d} '
                     f'| {mcnemar_p(b, c):.3f} |')
    extra_table(["solved by none only", "solved by method only", "net", "McNemar exact p"], lines)


def failures(rows):
    """Failed episodes by failure mode (JSONs written since the failure analysis)."""
    lines = []
    for r in rows:
        f = r.get("failures")
        if not f:
            continue
        confusions = sorted(f.get("wrong_object_confusions", {}).items(),
                            key=lambda kv: (-kv[1], kv[0]))
        top = ", ".join(f"{pair} {n}" for pair, n in confusions[:2]) or "–"
        lines.append(f'| {r["method"]} | {r["suite"]} | {r["episodes"] - r["successes"]} '
                     f'| {f["wrong_object"]} ({f["wrong_object_same_colour"]} / '
                     f'{f["wrong_object_same_shape"]}) | {f["not_placed"]} '
                     f'({f.get("not_placed_wrong_destination", "–")} / '
                     f'{f.get("not_placed_still_held", "–")}) '
                     f'| {f["never_grasped"]} | {top} |')
    extra_table(["failed", "grasped a wrong object (same colour / same shape)",
                 "goal objects only, not placed (on a wrong plate / still held)", "never grasped",
                 "commonest first wrong grasps (wanted -> grasped)"], lines)


def per_task(results, seed, fixed_tasks):
    """Successes per task of a fixed task set (episode i has seed + i, task (seed + i) % N)."""
    if not fixed_tasks:
        return
    lines = []
    for r in results:
        ok = r.get("episode_success")
        if not ok:
            continue
        solved, tried = [0] * fixed_tasks, [0] * fixed_tasks
        for i, x in enumerate(ok):
            solved[(seed + i) % fixed_tasks] += x
            tried[(seed + i) % fixed_tasks] += 1
        lines.append(f'| {r["method"]} | {r["suite"]} | '
                     + " | ".join(f"{a}/{b}" for a, b in zip(solved, tried)) + " |")
    extra_table([f"task {i}" for i in range(fixed_tasks)], lines)


PAIRING_KEYS = ("seed", "episodes_per_suite", "fixed_tasks")


def load(paths):
    """One run's JSON, or several runs on the same episodes merged into one."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    if len(runs) == 1:
        return runs[0]
    for path, d in zip(paths[1:], runs[1:]):
        for key in PAIRING_KEYS:
            if d.get(key) != runs[0].get(key):
                sys.exit(f"{path}: {key} {d.get(key)} differs from {paths[0]}'s "
                         f"{runs[0].get(key)}; the episodes would not pair up")
    merged = {key: runs[0].get(key) for key in PAIRING_KEYS}
    merged["results"], merged["summary"] = [], []
    for path, d in zip(paths, runs):
        label = os.path.splitext(os.path.basename(d.get("pruning_file") or path))[0]
        summary = d["summary"]
        for key, rows in (("results", d["results"]),
                          ("summary", summary if isinstance(summary, list) else summary.values())):
            for r in rows:
                if r["method"] != "none":
                    r = dict(r, method=f'{r["method"]} ({label})')
                merged[key].append(r)
    return merged


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    d = load(sys.argv[1:])
    print("| method | suite | success | retention (mean over layers) | FLOPs % "
          "| speedup vs none | action deviation | V_global recall |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for r in d["results"]:
        print(row(r))
    summary = d["summary"]
    for r in summary if isinstance(summary, list) else summary.values():
        print(row(dict(r, suite=r.get("suite", "all")), bold=True))
    rows = list(d["results"])
    rows += [dict(r, suite=r.get("suite", "all"))
             for r in (summary if isinstance(summary, list) else summary.values())]
    paired(rows)
    failures(rows)
    per_task(d["results"], d.get("seed", 0), d.get("fixed_tasks", 0))


if __name__ == "__main__":
    main()
