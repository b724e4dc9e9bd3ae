#!/usr/bin/env python3
"""bench/gpu.sh's summary: gpu_summary.md and gpu_results.json from the steps' outputs under WORK,
with each floor of issue #28 checked (pass / fail / not measured).

usage: gpu_summary.py WORK OUT_DIR   (run by bench/gpu.sh write_summary; MODE and the other
settings from its environment)
"""
import glob, json, os, re, sys

work, out = sys.argv[1:3]
mode = os.environ.get("MODE")

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def read(path, default=""):
    try:
        return open(path).read().strip()
    except OSError:
        return default

def tsv(path):
    try:
        return [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    except OSError:
        return []

steps = [dict(zip(["step", "status", "exit", "seconds", "limit_s"], r)) for r in tsv(os.path.join(work, "steps.tsv"))]
for s in steps:
    s["notes"] = read(os.path.join(work, "notes", s["step"] + ".txt")).splitlines()
env = load(os.path.join(out, "env.json")) or {}

def gtest(path):
    j = load(path)
    if not j:
        return None
    res = {"tests": 0, "failures": 0, "skipped": 0, "failed_names": [], "skipped_names": []}
    for suite in j.get("testsuites", []):
        for t in suite.get("testsuite", []):
            res["tests"] += 1
            name = suite.get("name", "") + "." + t.get("name", "")
            if t.get("failures"):
                res["failures"] += 1
                res["failed_names"].append(name)
            elif t.get("result") == "SKIPPED":
                res["skipped"] += 1
                res["skipped_names"].append(name)
    return res
tests = {os.path.basename(p)[6:-5]: gtest(p) for p in sorted(glob.glob(os.path.join(work, "gtest-*.json")))}

ref = load(os.path.join(out, "reference_check.json"))
ref_status = next((s["status"] for s in steps if s["step"] == "reference"), "not run")

bench = []
for p in sorted(glob.glob(os.path.join(work, "bench-b*.json")), key=lambda p: int(re.findall(r"b(\d+)", os.path.basename(p))[0])):
    j = load(p)
    if j:
        bench.append(j)

serve_runs = []
for r in tsv(os.path.join(work, "serve", "runs.tsv")):
    name, batch, method, robots, rc = r
    res = load(os.path.join(work, "serve", name + ".json"))
    entry = {"name": name, "max_batch_size": int(batch), "batching": int(batch) > 1,
             "pruning": method, "robots": int(robots), "loadgen_exit": int(rc), "result": res}
    def metric(path, key):
        vals = [float(m.group(2)) for m in (re.match(r"^%s(\{[^}]*\})? ([0-9.eE+-]+)$" % re.escape(key), l)
                for l in read(path).splitlines()) if m]
        return sum(vals) if vals else None
    b = os.path.join(work, "serve", name + ".metrics.before")
    a = os.path.join(work, "serve", name + ".metrics.after")
    s1, c1 = metric(b, "specprune_batch_size_sum"), metric(b, "specprune_batch_size_count")
    s2, c2 = metric(a, "specprune_batch_size_sum"), metric(a, "specprune_batch_size_count")
    if s2 is not None and c2:
        dc = c2 - (c1 or 0)
        entry["mean_batch_size"] = (s2 - (s1 or 0)) / dc if dc else None
    serve_runs.append(entry)

checkpoints = [dict(zip(["config", "dtype", "exit", "seconds"], r)) for r in tsv(os.path.join(work, "checkpoints.tsv"))]
deps = [dict(zip(["key", "source", "path"], r)) for r in tsv(os.path.join(work, "deps.tsv"))]
targets = dict((r[0], r[1]) for r in tsv(os.path.join(work, "targets.tsv")))
serve_model = read(os.path.join(work, "serve_model"), None)
bench_weights = read(os.path.join(work, "bench_weights"), None)

# Floors of issue #28 (checked on a GPU run only; the card is recorded).
floors = []
def by(batch, method):
    for j in bench:
        if j["batch"] == batch:
            for r in j["results"]:
                if r["method"] == method:
                    return j, r
    return None, None
def floor(name, value, ok, text):
    floors.append({"floor": name, "value": value, "holds": ok, "measured": text})
if mode == "gpu":
    _, n1 = by(1, "none")
    _, s1 = by(1, "specprune")
    _, s8 = by(8, "specprune")
    # holds: True / False, or None when not measured (shown as such, never as a pass).
    floor("unpruned 7B bf16 batch 1 end to end <= 25 ms", n1 and n1["e2e_seconds"]["median"] * 1e3,
          None if n1 is None else n1["e2e_seconds"]["median"] * 1e3 <= 25,
          "%.1f ms" % (n1["e2e_seconds"]["median"] * 1e3) if n1 else "not measured")
    floor("SpecPrune batch 1 >= 1.5x end to end", s1 and s1["speedup_vs_none"],
          None if s1 is None else s1["speedup_vs_none"] >= 1.5,
          "%.2fx" % s1["speedup_vs_none"] if s1 else "not measured")
    floor("SpecPrune batch 8 throughput >= 2.0x unpruned batch 8", s8 and s8["speedup_vs_none"],
          None if s8 is None else s8["speedup_vs_none"] >= 2.0,
          "%.2fx" % s8["speedup_vs_none"] if s8 else "not measured")
    shares = [(j["batch"], r["pruning_own_share_of_e2e"]["median"]) for j in bench for r in j["results"] if r["method"] == "specprune"]
    floor("pruning overhead <= 3% of a pass", max((s for _, s in shares), default=None),
          all(s <= 0.03 for _, s in shares) if shares else None,
          ", ".join("b%d %.1f%%" % (b, 100 * s) for b, s in shares) or "not measured")
    c = next((e for e in serve_runs if e["robots"] == 32 and e["batching"] and e["pruning"] == "specprune" and e["result"]), None)
    seven = serve_model == "openvla-oft-7b"
    if c:
        t, p99 = c["result"]["throughput_rps"], c["result"]["latency_ms"]["p99"]
        floor("serving 32 robots, SpecPrune + batching: >= 600/s at p99 <= 60 ms" + ("" if seven else " (n/a: served model %s, not 7B)" % serve_model),
              t, (t >= 600 and p99 <= 60) if seven else None, "%.0f/s, p99 %.1f ms" % (t, p99))
    else:
        floor("serving 32 robots, SpecPrune + batching: >= 600/s at p99 <= 60 ms", None, None, "not measured")
    fp32 = ((ref or {}).get("quantities") or {}).get("fp32") or {}
    worst = [v["max_rel"] for e in fp32.values() for v in (e.get("vs") or {}).values()
             if isinstance(v, dict) and "max_rel" in v]
    floor("reference check: fp32 max relative error <= 1e-3 (hidden states, actions)",
          max(worst) if worst else None,
          (all(e.get("pass") for e in fp32.values()) if fp32 else None),
          ("worst %.2e; " % max(worst) if worst else "") + "reference step: %s" % ref_status)

doc = {"mode": mode, "card": env.get("card"), "driver": env.get("driver"),
       "nvidia_smi_L": env.get("nvidia_smi_L"), "torch": (env.get("torch_python") or {}).get("version") or env.get("system_libtorch"),
       "nvcc": env.get("nvcc"), "steps": steps, "dependency_sources": deps, "targets": targets,
       "tests": tests, "reference": {"status": ref_status, "report": ref},
       "checkpoints": checkpoints, "bench_weights": bench_weights, "bench": bench,
       "serve_model": serve_model, "serve": serve_runs, "floors": floors,
       "steps_not_run": [s for s in os.environ.get("STEPS_LIST", "").split() if s not in [t["step"] for t in steps]],
       "pass": all(s["status"] in ("ok", "skipped", "missing") for s in steps)}  # no-time: not passed
doc["pass"] = doc["pass"] and bool(steps) and not doc["steps_not_run"]  # no steps: nothing passed
doc["floors_held"] = sum(1 for fl in floors if fl["holds"] is True)
doc["floors_failed"] = sum(1 for fl in floors if fl["holds"] is False)
with open(os.path.join(out, "gpu_results.json"), "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

f1 = lambda v, fmt="%.1f": "-" if v is None else fmt % v
L = ["# bench/gpu.sh: %s run" % mode, "",
     "Card: %s (driver %s); `nvidia-smi -L`: %s. Torch %s; nvcc: %s; %s CPUs (%s); %s." % (
         env.get("card") or "none", env.get("driver") or "-", "; ".join(env.get("nvidia_smi_L") or []) or "-",
         doc["torch"] or "-", env.get("nvcc") or "-", env.get("nproc"), env.get("cpu_model") or "-", env.get("date_utc") or "-"),
     "", "## Steps", "", "| step | status | exit | seconds | limit s | notes |", "|---|---|--:|--:|--:|---|"]
for s in steps:
    L.append("| %s | %s | %s | %s | %s | %s |" % (s["step"], s["status"], s["exit"], s["seconds"], s["limit_s"],
             "<br>".join(n.replace("|", "/") for n in s["notes"][:8])))
if deps:
    carried = [d["key"] for d in deps if d["source"] == "carried"]
    system = [d["key"] for d in deps if d["source"] == "system"]
    L += ["", "Dependencies: from the carried tree: %s; from the system: %s; LibTorch: %s." % (
        ", ".join(carried) or "none", ", ".join(system) or "none",
        next((d["path"] for d in deps if d["key"] == "Torch_DIR"), "-"))]
if tests:
    L += ["", "## Tests", "", "| binary | tests | failed | skipped |", "|---|--:|--:|--:|"]
    for name, r in tests.items():
        if r:
            L.append("| %s | %d | %d%s | %d |" % (name, r["tests"], r["failures"],
                     " (" + ", ".join(r["failed_names"][:5]) + ")" if r["failed_names"] else "", r["skipped"]))
if ref or any(s["step"] == "reference" for s in steps):
    L += ["", "## Reference check (tools/reference_check.py)", "",
          "Step: %s; report status: %s%s." % (ref_status, (ref or {}).get("status", "no report"),
          "; failed: " + ", ".join(ref["failed"]) if ref and ref.get("failed") else "")]
if ref and ref.get("quantities"):
    L += ["", "| dtype | quantity | tolerance | max rel error (worst sample) per reference | pass |", "|---|---|--:|---|---|"]
    for dt, qs in ref["quantities"].items():
        for name, e in qs.items():
            per = "; ".join("%s %s" % (k, "%.2e" % v["max_rel"] if isinstance(v, dict) and "max_rel" in v
                                       else (v or {}).get("error", "?") if isinstance(v, dict) else "?")
                            for k, v in (e.get("vs") or {}).items())
            L.append("| %s | %s | %s | %s | %s |" % (dt, name, e.get("tolerance"), per, "yes" if e.get("pass") else "NO"))
if bench:
    j0 = bench[0]
    L += ["", "## Model benchmark (%s, %s on %s, %d vision tokens, %s weights; medians of %d iterations after %d warm-up)" % (
        j0["config"], j0["dtype"], j0["device"], j0["vision_tokens"], bench_weights or "?", j0["iters"], j0["warmup"]), "",
        "| batch | method | e2e ms | e2e p90 ms | LLM ms | vision ms | samples/s | speedup vs none | LLM speedup | retained tokens (after static / mean over layers) | pruning own ms (share of e2e) |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for j in bench:
        vt = j["vision_tokens"]
        for r in j["results"]:
            e2e = r["e2e_seconds"]["median"]
            L.append("| %d | %s | %.2f | %.2f | %.2f | %.2f | %.1f | %s | %s | %.0f / %.0f | %.2f (%.1f%%) |" % (
                j["batch"], r["method"], e2e * 1e3, r["e2e_seconds"]["p90"] * 1e3, r["llm_seconds"]["median"] * 1e3,
                r["vision_seconds"]["median"] * 1e3, j["batch"] / e2e if e2e else 0,
                f1(r["speedup_vs_none"] or None, "%.2fx"), f1(r["llm_speedup_vs_none"] or None, "%.2fx"),
                vt * r["retention_after_static"], vt * r["retention_mean_over_layers"],
                r["pruning_own_seconds"]["median"] * 1e3, 100 * r["pruning_own_share_of_e2e"]["median"]))
    L.append("")
    L.append("Load: " + "; ".join("batch %d: %.1f s, peak RSS %.1f GB" % (j["batch"], j["load_seconds"], j["peak_rss_bytes"] / 1e9) for j in bench) + "."
             + ("" if not checkpoints else " Random checkpoints: " + "; ".join(
                 "%s %s reused from an earlier run" % (c["config"], c["dtype"]) if c["exit"] == "reused" else
                 "%s %s written in %s s (exit %s)" % (c["config"], c["dtype"], c["seconds"], c["exit"]) for c in checkpoints) + "."))
if serve_runs:
    L += ["", "## Serving (model %s on %s; loadgen closed loop, %s s measured per run)" % (
        serve_model, env.get("card") or "CPU", os.environ.get("SERVE_DURATION_S")), "",
        "| batching (max batch) | pruning | robots | ok req | req/s | p50 ms | p90 ms | p99 ms | mean batch | retained/total tokens | srv llm ms | errors | mismatches | lost |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for e in serve_runs:
        r = e["result"]
        label = "on (%d)" % e["max_batch_size"] if e["batching"] else "off (1)"
        if not r:
            L.append("| %s | %s | %d | loadgen exit %d, no report |||||||||||" % (label, e["pruning"], e["robots"], e["loadgen_exit"]))
            continue
        lat, vt = r["latency_ms"], r["vision_tokens"]
        L.append("| %s | %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %s | %.1f/%.0f | %s | %d | %d | %d |" % (
            label, e["pruning"], e["robots"], r["requests"]["measured_ok"], r["throughput_rps"], lat["p50"], lat["p90"],
            lat["p99"], f1(e.get("mean_batch_size"), "%.2f"), vt["mean_retained"], vt["mean_total"],
            f1(r["server_timings_median_ms"].get("llm")), r["requests"]["errors_total"], r["mismatches"], r["lost"]))
if floors:
    L += ["", "## Floors of issue #28 (this card: %s)" % (env.get("card") or "none"), "", "| floor | measured | holds |", "|---|---|---|"]
    for fl in floors:
        L.append("| %s | %s | %s |" % (fl["floor"], fl["measured"], {True: "yes", False: "NO", None: "not measured"}[fl["holds"]]))
redo = [s["step"] for s in steps if s["status"] in ("no-time", "timeout", "interrupted", "fail") or
        any("no time left" in n for n in s["notes"])] + doc["steps_not_run"]
if redo and mode == "gpu":
    L += ["", "To redo %s on the still-warm machine (build-gpu/ and the checkpoints are kept): "
          "`run(command=\"bash bench/gpu.sh --out $OUT --steps %s --budget-s 400\", carry=[\".gpu-debs\"], timeout_s=480)`." % (
              ", ".join(redo), ",".join(redo))]
L += ["", "Overall: %s (every step passed: %s%s)." % ("PASS" if doc["pass"] else "FAIL", doc["pass"],
      "; not run: " + ", ".join(doc["steps_not_run"]) if doc["steps_not_run"] else "")]
if floors:  # the GPU run's floors (a smoke run has none)
    L += ["Floors: %d of %d hold, %d fail, %d not measured." % (
        doc["floors_held"], len(floors), doc["floors_failed"],
        len(floors) - doc["floors_held"] - doc["floors_failed"])]
text = "\n".join(L) + "\n"
with open(os.path.join(out, "gpu_summary.md"), "w") as f:
    f.write(text)
print(text, end="")
