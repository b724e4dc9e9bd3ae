#!/usr/bin/python3
"""Checks the layer dependency rules of docs/ARCHITECTURE.md ("Dependency rules").

Scans the `#include "x/..."` lines of every .h/.cc/.cu file under the top-level folders of the
repository and fails when a folder includes one of our folders it must not.

  /usr/bin/python3 tools/check_layers.py [ROOT]     check ROOT (default: the repository root)
  /usr/bin/python3 tools/check_layers.py --self-test

An include is "ours" when its first path component is a top-level folder of ROOT, a folder of the
rule table, or an alias (generated proto headers, "specprune/v1/*.pb.h", belong to proto).
Includes of third-party headers (absl/, torch/, grpcpp/, ...) and of the file's own folder are
always allowed. A folder holding sources but missing from the table is an error too, so a new layer
must be given its rule here (and in docs/ARCHITECTURE.md).

Exit status: 0 clean, 1 forbidden includes or unknown folders (each printed as
FILE:LINE: message), 2 usage error. Standard library only.
"""

import os
import re
import subprocess
import sys
import tempfile

ANY = "*"  # may include every folder

# Layer -> the layers it may include (besides itself). Keep in sync with docs/ARCHITECTURE.md.
# | folder  | may include                                   |
# |---------|-----------------------------------------------|
# | util    | (nothing of ours)                             |
# | image   | util                                          |
# | kernels | util                                          |
# | pruning | kernels, util                                 |
# | model   | kernels, image, pruning, util                 |
# | policy  | model, pruning, kernels, image, util          |
# | sim     | image, util                                   |
# | proto   | (nothing)                                     |
# | server  | policy, model, pruning, image, proto, util    |
# | client  | proto, image, sim, util                       |
# | bench   | anything                                      |
# | tools   | anything                                      |
# | tests   | anything                                      |
# | fuzz    | anything                                      |
RULES = {
    "util": (),
    "image": ("util",),
    "kernels": ("util",),
    "pruning": ("kernels", "util"),
    "model": ("kernels", "image", "pruning", "util"),
    "policy": ("model", "pruning", "kernels", "image", "util"),
    "sim": ("image", "util"),
    "proto": (),
    "server": ("policy", "model", "pruning", "image", "proto", "util"),
    "client": ("proto", "image", "sim", "util"),
    "bench": ANY,
    "tools": ANY,
    "tests": ANY,
    "fuzz": ANY,  # libFuzzer targets: test code over the parsers of every layer
}

# Include prefixes that are not folders of the source tree but belong to one of its layers.
ALIASES = {
    "specprune": "proto",  # protoc output: specprune/v1/vla_service.pb.h, .grpc.pb.h
}

SOURCE_SUFFIXES = (".h", ".cc", ".cu")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def is_skipped_dir(root, name):
    """Hidden folders and build trees (build*, or anything holding a CMakeCache.txt)."""
    if name.startswith(".") or name.startswith("build") or name == "__pycache__":
        return True
    return os.path.isfile(os.path.join(root, name, "CMakeCache.txt"))


def top_level_folders(root):
    return sorted(
        n
        for n in os.listdir(root)
        if os.path.isdir(os.path.join(root, n)) and not is_skipped_dir(root, n)
    )


def source_files(root, folder):
    """Yields repository-relative paths ('/'-separated) of the sources under `folder`."""
    base = os.path.join(root, folder)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not is_skipped_dir(dirpath, d))
        for f in sorted(filenames):
            if f.endswith(SOURCE_SUFFIXES):
                full = os.path.join(dirpath, f)
                yield os.path.relpath(full, root).replace(os.sep, "/")


def includes(path):
    """Yields (line number, include path) of the quoted includes outside /* */ comments."""
    in_comment = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            text = line
            if in_comment:
                end = text.find("*/")
                if end < 0:
                    continue
                text = text[end + 2 :]
                in_comment = False
            m = INCLUDE_RE.match(text)
            if m:
                yield lineno, m.group(1)
            # Track a block comment opened (and not closed) on this line.
            code = text.split("//", 1)[0]
            while True:
                start = code.find("/*")
                if start < 0:
                    break
                end = code.find("*/", start + 2)
                if end < 0:
                    in_comment = True
                    break
                code = code[end + 2 :]


def allowed_text(folder):
    rule = RULES[folder]
    if rule == ANY:
        return "anything"
    return ", ".join(sorted(rule)) if rule else "nothing of ours"


def check(root):
    """Returns a list of (file, line, message) problems for the tree at `root`."""
    folders = top_level_folders(root)
    ours = set(folders) | set(RULES) | set(ALIASES)
    problems = []
    for folder in folders:
        files = list(source_files(root, folder))
        if not files:
            continue
        if folder not in RULES:
            problems.append(
                (folder, 0, "folder '%s' has sources but no layer rule in "
                 "tools/check_layers.py (RULES) and docs/ARCHITECTURE.md" % folder)
            )
            continue
        rule = RULES[folder]
        for rel in files:
            for lineno, inc in includes(os.path.join(root, rel)):
                if "/" not in inc:
                    continue  # same-directory include
                target = inc.split("/", 1)[0]
                if target not in ours:
                    continue  # third-party (absl/, torch/, grpcpp/, nlohmann/, ...)
                layer = ALIASES.get(target, target)
                if layer == folder or rule == ANY or layer in rule:
                    continue
                problems.append(
                    (rel, lineno, 'forbidden include "%s": %s -> %s (%s may include: %s)'
                     % (inc, folder, layer, folder, allowed_text(folder)))
                )
    return problems


def run_check(root):
    problems = check(root)
    for path, line, msg in problems:
        print("%s:%d: %s" % (path, line, msg))
    if problems:
        print("layer check FAILED: %d problem(s) under %s (rules: tools/check_layers.py, "
              "docs/ARCHITECTURE.md)" % (len(problems), root), file=sys.stderr)
        return 1
    print("layer check OK: %s" % root)
    return 0


def self_test():
    """A temporary tree with one allowed and one forbidden include must yield exactly the latter."""
    failures = []
    with tempfile.TemporaryDirectory(prefix="check_layers_") as root:
        files = {
            "image/image_codec.h": "#pragma once\n",
            "model/vla_model.h": "#pragma once\n",
            "sim/render.cc": (
                "#include \"sim/render.h\"\n"           # own folder: allowed
                "#include \"absl/status/status.h\"\n"   # third party: allowed
                "#include \"image/image_codec.h\"\n"    # sim -> image: allowed
                "#include \"model/vla_model.h\"\n"      # sim -> model: forbidden
            ),
            "sim/render.h": "#pragma once\n",
        }
        for rel, text in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        # A build tree (skipped) holding a forbidden include must not be reported.
        os.makedirs(os.path.join(root, "build-x", "sim"))
        with open(os.path.join(root, "build-x", "CMakeCache.txt"), "w"):
            pass
        with open(os.path.join(root, "build-x", "sim", "gen.cc"), "w") as f:
            f.write('#include "model/vla_model.h"\n')

        problems = check(root)
        want = [("sim/render.cc", 4, "sim -> model")]
        got = [(p, l, m) for p, l, m in problems]
        if len(got) != 1 or got[0][0] != want[0][0] or got[0][1] != want[0][1] \
                or want[0][2] not in got[0][2]:
            failures.append("check(): want exactly %s, got %s" % (want, got))

        # The command line: non-zero with the violation, zero once it is removed.
        me = os.path.abspath(__file__)
        r = subprocess.run([sys.executable, me, root], capture_output=True, text=True)
        if r.returncode != 1 or "sim/render.cc:4:" not in r.stdout \
                or "sim -> model" not in r.stdout:
            failures.append("CLI on the bad tree: rc=%d stdout=%r stderr=%r"
                            % (r.returncode, r.stdout, r.stderr))
        with open(os.path.join(root, "sim/render.cc"), "w") as f:
            f.write(files["sim/render.cc"].replace('#include "model/vla_model.h"\n', ""))
        r = subprocess.run([sys.executable, me, root], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append("CLI on the fixed tree: rc=%d stdout=%r stderr=%r"
                            % (r.returncode, r.stdout, r.stderr))

    for f in failures:
        print("self-test FAILED: " + f, file=sys.stderr)
    if not failures:
        print("self-test OK")
    return 1 if failures else 0


def main(argv):
    if len(argv) == 2 and argv[1] == "--self-test":
        return self_test()
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 2
    root = argv[1] if len(argv) == 2 else os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))
    if not os.path.isdir(root):
        print("check_layers: %s is not a directory" % root, file=sys.stderr)
        return 2
    return run_check(os.path.abspath(root))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
