#!/usr/bin/python3
"""Sorts ThreadSanitizer reports into this project's and the uninstrumented libraries' own.

Why this exists: TSAN sees only instrumented code. Debian's gRPC, protobuf and Abseil are not
instrumented, so a buffer that gRPC hands from its poller thread to a callback thread (through its
own atomics) looks like a race to TSAN: the integration tests report hundreds of those hand-offs,
all with gRPC, protobuf or the C++ library on both sides. Suppression files cannot tell them from
a race in our code (`race:grpc::` matches any frame, and every RPC handler runs under gRPC frames),
so this script reads the reports instead.

Rule: in each of a report's access stacks (the first two stacks of a data race or use-after-free;
the stacks of a lock-order inversion, thread leak and the others), skip the sanitizer's own frames
and the C++ standard library's (std::, __gnu_cxx::, operator new/delete, libstdc++); the first
frame left is the stack's owner. A report is OURS when any stack's owner is project code (a
function in namespace specprune, or a file under the source tree; not the generated stubs).
Every other report is a LIBRARY hand-off: counted and summarised, not a failure.

Usage: tsan_triage.py SOURCE_DIR LOG_FILE...   (TSAN_OPTIONS=log_path=... writes LOG.<pid>)
Exit 0 when no report is ours, 1 otherwise (each of ours is printed in full).
"""
import collections
import re
import sys

FRAME = re.compile(r"^\s+#\d+ (?P<func>.*?) (?P<file>\S+) \((?P<module>[^)]*)\)$")
STACK_HEAD = re.compile(r"^  (Read|Write|Atomic|Previous|Mutex|Thread|Cycle|Call|Heap|Location)")
# Context stacks: where the memory came from and who created a thread; they name no access.
CONTEXT_HEAD = re.compile(r"^  (Location is|Thread T\d+ .*created by|Mutex M\d+ .*created at)")

STD_FUNC = re.compile(r"^(std::|__gnu_cxx::|operator new|operator delete|void std::|__cxx)")
SANITIZER_FILE = re.compile(r"(libsanitizer|/tsan/|sanitizer_common)")


def split_reports(text):
    """The text between TSAN's '==================' fences that starts with a WARNING line."""
    reports, current = [], None
    for line in text.splitlines():
        if line.startswith("WARNING: ThreadSanitizer:"):
            current = [line]
            reports.append(current)
        elif current is not None:
            if line.startswith("=================="):
                current = None
            else:
                current.append(line)
    return reports


def access_stacks(report):
    """Frames of each stack in the report that names an access (context stacks left out)."""
    stacks, frames, in_context = [], None, False
    for line in report[1:]:
        if STACK_HEAD.match(line) or CONTEXT_HEAD.match(line):
            in_context = bool(CONTEXT_HEAD.match(line))
            frames = None if in_context else []
            if frames is not None:
                stacks.append(frames)
            continue
        m = FRAME.match(line)
        if m and frames is not None and not in_context:
            frames.append(m.groupdict())
    return [s for s in stacks if s]


def owner(frames):
    for f in frames:
        module = f["module"]
        if SANITIZER_FILE.search(f["file"]) or "libtsan" in module:
            continue
        if STD_FUNC.match(f["func"]) or "libstdc++" in module:
            continue
        return f
    return frames[-1]


def is_ours(frame, source_dir):
    """Hand-written project code: not the generated protobuf/gRPC stubs (specprune::v1::)."""
    func = re.sub(r"^(\w+ )+(?=\w+::)", "", frame["func"])  # a return type before the name
    if func.startswith("specprune::") and not func.startswith("specprune::v1::"):
        return True
    path = frame["file"]
    return path.startswith(source_dir) and not re.match(r"build[^/]*/", path[len(source_dir):])


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    source_dir = argv[1].rstrip("/") + "/"
    ours, library = [], collections.Counter()
    for log in argv[2:]:
        with open(log, errors="replace") as f:
            for report in split_reports(f.read()):
                owners = [owner(s) for s in access_stacks(report)]
                if any(is_ours(o, source_dir) for o in owners):
                    ours.append((log, report))
                else:
                    kind = report[0].split("ThreadSanitizer:")[1].split("(")[0].strip()
                    top = owners[0] if owners else {"func": "?", "module": "?"}
                    library[f"{kind}: {top['func'].split('(')[0][:90]} ({top['module']})"] += 1
    for log, report in ours:
        print(f"== ThreadSanitizer report in project code ({log}):")
        print("\n".join(report))
    print(f"tsan_triage: {len(ours)} report(s) in project code, "
          f"{sum(library.values())} library hand-off(s) in uninstrumented gRPC/protobuf/Abseil")
    for what, n in library.most_common(8):
        print(f"  {n:5d}  {what}")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
