#!/usr/bin/env python3
"""Keeps Dockerfile.cuda in step with the tested CPU Dockerfile (neither Docker nor a network).

Dockerfile.cuda cannot be built on the dev boxes (no registry, no download site, no GPU), so what
can drift silently is checked here instead:
  - its runtime libraries are the CPU runtime-base's minus Debian's libtorch and OpenBLAS;
  - user, ports, signal, healthcheck command and entrypoint are the CPU image's;
  - its build stage leaves libtorch-dev out of deploy/setup.sh, and setup.sh honours that
    (`SPECPRUNE_SETUP_SKIP=libtorch-dev deploy/setup.sh --print`);
  - broken copies (a library dropped, another entrypoint) are rejected (self-test).
Usage: tests/dockerfile_cuda_test.py REPO_ROOT
"""
import os
import re
import subprocess
import sys

CPU_ONLY = {"libtorch1.13", "libopenblas0-pthread"}
SAME_INSTRUCTIONS = ("EXPOSE", "HEALTHCHECK_CMD", "STOPSIGNAL", "ENTRYPOINT", "USER", "useradd")


def logical_lines(text):
    """Dockerfile lines with backslash continuations joined and comments dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def stages(text):
    """{stage name: [logical lines]} in file order."""
    result, name = {}, None
    for line in logical_lines(text):
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            name = m.group(1)
            result[name] = []
        elif name:
            result[name].append(line)
    return result


def apt_packages(lines):
    pkgs = set()
    for line in lines:
        for m in re.finditer(r"apt-get install ([^&]*)", line):
            pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


def instructions(lines):
    found = {}
    for line in lines:
        word = line.split()[0]
        if word in ("EXPOSE", "STOPSIGNAL", "ENTRYPOINT", "USER"):
            found[word] = line
        elif word == "HEALTHCHECK":
            found["HEALTHCHECK_CMD"] = line[line.index("CMD"):]
        elif "useradd" in line:
            found["useradd"] = line[line.index("useradd"):]
    return found


def check(cpu_text, cuda_text, repo):
    """Returns the list of problems (empty: in step)."""
    problems = []
    cpu, cuda = stages(cpu_text), stages(cuda_text)
    for stage, where in (("runtime-base", cpu), ("build", cuda), ("runtime", cuda)):
        if stage not in where:
            return [f"stage {stage} missing"]
    want = apt_packages(cpu["runtime-base"]) - CPU_ONLY
    got = apt_packages(cuda["runtime"])
    if want != got:
        problems.append(f"runtime libraries differ: missing {sorted(want - got)}, "
                        f"extra {sorted(got - want)}")
    a, b = instructions(cpu["runtime-base"] + cpu["runtime"]), instructions(cuda["runtime"])
    for key in SAME_INSTRUCTIONS:
        if a.get(key) != b.get(key) and key != "HEALTHCHECK_CMD":
            problems.append(f"{key} differs: CPU {a.get(key)!r}, CUDA {b.get(key)!r}")
    if a.get("HEALTHCHECK_CMD") != b.get("HEALTHCHECK_CMD"):
        problems.append("healthcheck command differs")
    build = " ".join(cuda["build"])
    m = re.search(r'SPECPRUNE_SETUP_SKIP="([^"]*)"\s+deploy/setup\.sh', build)
    if not m or "libtorch-dev" not in m.group(1).split():
        problems.append("build stage does not run deploy/setup.sh without libtorch-dev")
    elif repo:
        env = dict(os.environ, SPECPRUNE_SETUP_SKIP=m.group(1))
        kept = subprocess.run([os.path.join(repo, "deploy/setup.sh"), "--print"], env=env,
                              check=True, capture_output=True, text=True).stdout.split()
        full = subprocess.run([os.path.join(repo, "deploy/setup.sh"), "--print"], check=True,
                              capture_output=True, text=True).stdout.split()
        if "libtorch-dev" in kept or set(full) - set(kept) != {"libtorch-dev"}:
            problems.append(f"setup.sh --print with the skip list kept {len(kept)} of {len(full)}")
    if "/opt/libtorch" not in build or "CMAKE_CUDA_COMPILER" not in build:
        problems.append("build stage does not configure against /opt/libtorch with nvcc")
    return problems


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else "."
    cpu_text = open(os.path.join(repo, "Dockerfile")).read()
    cuda_text = open(os.path.join(repo, "Dockerfile.cuda")).read()
    problems = check(cpu_text, cuda_text, repo)
    for p in problems:
        print("dockerfile_cuda_test: FAIL:", p)
    broken = {
        "a runtime library dropped": cuda_text.replace(" libssl3 ", " "),
        "another entrypoint": cuda_text.replace('"--host", "0.0.0.0"', '"--host", "127.0.0.1"'),
        "libtorch-dev kept": cuda_text.replace('SPECPRUNE_SETUP_SKIP="libtorch-dev"',
                                               'SPECPRUNE_SETUP_SKIP=""'),
    }
    for what, text in broken.items():
        if text == cuda_text or not check(cpu_text, text, None):
            problems.append(f"self-test: a copy with {what} was not rejected")
            print("dockerfile_cuda_test: FAIL: self-test:", what)
    if problems:
        return 1
    print("dockerfile_cuda_test: Dockerfile.cuda is in step with Dockerfile "
          f"({len(apt_packages(stages(cuda_text)['runtime']))} runtime libraries); "
          f"{len(broken)} broken copies rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
