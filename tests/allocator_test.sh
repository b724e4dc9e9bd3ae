#!/usr/bin/env bash
# The model executables run on tcmalloc (CMakeLists.txt, SPECPRUNE_TCMALLOC): for each executable
# given, the dynamic linker binds `malloc` to libtcmalloc_minimal, not to glibc. Checked at run
# time (LD_DEBUG=bindings while the program prints its usage), so it fails when the library is
# dropped from the link (e.g. by --as-needed) as well as when it is not linked at all.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 EXECUTABLE..." >&2; exit 2; }
status=0
for exe in "$@"; do
  bindings="$(LD_DEBUG=bindings "$exe" --help 2>&1 >/dev/null | grep -E "normal symbol \`malloc'" || true)"
  if [ -z "$bindings" ]; then
    echo "FAIL $(basename "$exe"): no malloc binding seen (LD_DEBUG=bindings)"; status=1
  elif grep -q -v "to [^ ]*libtcmalloc_minimal" <<<"$bindings"; then
    echo "FAIL $(basename "$exe"): malloc bound elsewhere:"
    grep -v "to [^ ]*libtcmalloc_minimal" <<<"$bindings" | head -3; status=1
  else
    echo "ok   $(basename "$exe"): malloc -> libtcmalloc_minimal ($(wc -l <<<"$bindings") bindings)"
  fi
done
exit $status
