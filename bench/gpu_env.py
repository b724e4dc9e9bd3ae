#!/usr/bin/env python3
"""bench/gpu.sh's env step: env.json from the probes it wrote (nvidia-smi, nvcc, cmake, torch).

usage: gpu_env.py ENV_DIR OUT_JSON   (run by bench/gpu.sh step_env; MODE from its environment)
Prints one line: card, driver, torch, nvcc, cmake.
"""
import json, os, platform, subprocess, sys
e, out = sys.argv[1:3]
def read(name):
    try:
        return open(os.path.join(e, name)).read().strip()
    except OSError:
        return ""
def first(name):
    t = read(name)
    return t.splitlines()[0] if t else None
def last(name):
    t = read(name)
    return t.splitlines()[-1] if t else None
try:
    torch = json.loads(read("torch.json") or "{}")
except ValueError:
    torch = {"error": read("torch.json")}
if read("torch.err"):
    torch["stderr_tail"] = read("torch.err")[-400:]
smi_l = [l for l in read("nvidia_smi_L.txt").splitlines() if l.startswith("GPU")]
q = read("nvidia_smi_query.txt").splitlines()
gpus = []
for line in q:
    parts = [p.strip() for p in line.split(",")]
    if len(parts) >= 4 and "not found" not in line and "failed" not in line.lower():
        gpus.append(dict(zip(["name", "driver", "memory_total", "compute_cap", "max_sm_clock"], parts)))
cpu = ""
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    pass
mem = ""
try:
    mem = next(l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal"))
except (OSError, StopIteration):
    pass
doc = {
    "mode": os.environ.get("MODE"),
    "date_utc": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True).stdout.strip(),
    "host": platform.node(), "kernel": platform.release(), "nproc": os.cpu_count(),
    "cpu_model": cpu, "mem_total": mem,
    "nvidia_smi_L": smi_l, "gpus": gpus,
    "card": gpus[0]["name"] if gpus else None,
    "driver": gpus[0]["driver"] if gpus else None,
    "torch_python": torch,
    "system_libtorch": read("system_libtorch_version.txt") or None,
    "nvcc": last("nvcc.txt") if "Cuda compilation" in read("nvcc.txt") else None,
    "cmake": first("cmake.txt"), "ninja": first("ninja.txt"), "gxx": first("gxx.txt"),
    "python": sys.version.split()[0],
    "git_revision": read("git.txt") or "unknown (no .git in the device's copy of the tree)",
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print("card: %s, driver %s; torch %s (CUDA %s); nvcc: %s; %s" % (
    doc["card"], doc["driver"], torch.get("version"), torch.get("cuda"), doc["nvcc"], doc["cmake"]))
