#!/usr/bin/env bash
# .ci/tsan_triage.py on real ThreadSanitizer output (tests/data/tsan/, from the TSAN run of
# server_integration_test; project_race.log is a race planted in VlaServiceImpl::Predict to check
# the triage, library_handoffs.log the gRPC hand-offs every run has). The reports name the source
# tree they were made in, /work/main, which is passed as the source dir.
set -u
cd "$(dirname "$0")/.."
triage=".ci/tsan_triage.py"
data="tests/data/tsan"
fail() { echo "FAIL: $*"; exit 1; }

out=$(/usr/bin/python3 "$triage" /work/main "$data/library_handoffs.log") ||
  fail "library hand-offs alone must pass: $out"
grep -q "0 report(s) in project code, 6 library hand-off(s)" <<<"$out" || fail "counts: $out"

out=$(/usr/bin/python3 "$triage" /work/main "$data/project_race.log")
[ $? -eq 1 ] || fail "a race in project code must fail"
grep -q "server/service.cc:276 in specprune::VlaServiceImpl::Predict" <<<"$out" ||
  fail "the project race is printed in full: $out"

out=$(/usr/bin/python3 "$triage" /work/main "$data/library_handoffs.log" "$data/project_race.log")
[ $? -eq 1 ] || fail "one project race among library hand-offs must fail"
grep -q "1 report(s) in project code, 6 library hand-off(s)" <<<"$out" || fail "counts: $out"

# The same race, reported from another checkout, is not this tree's: the source dir matters for
# file paths, and the specprune:: namespace still makes it ours.
out=$(/usr/bin/python3 "$triage" /elsewhere "$data/project_race.log")
[ $? -eq 1 ] || fail "a specprune:: frame is project code wherever the tree is"

/usr/bin/python3 "$triage" /work/main >/dev/null 2>&1
[ $? -eq 2 ] || fail "no log files is a usage error"
echo "tsan_triage_test: OK"
