# bench/gpu.sh, the one prepared command for a GPU host (issue #28), and bench/gpu_carry.sh: their
# syntax, `--help`, and the `--dry-run` plan of both modes (prints every command, runs nothing,
# writes nothing), the summary of a run that did nothing (FAIL, every floor "not measured"), plus
# shellcheck when it is installed. The script itself runs on a device machine; its `--cpu-smoke`
# end to end needs a cold build of its own (too slow for CI; docs/BENCHMARKS.md).
add_test(NAME gpu_script_syntax
         COMMAND bash -c "set -e
bash -n bench/gpu.sh
bash -n bench/gpu_carry.sh
bash bench/gpu.sh --help | grep -q 'usage: bench/gpu.sh'
bash bench/gpu_carry.sh --help | grep -q 'usage: bench/gpu_carry.sh'
bash bench/gpu.sh --dry-run | grep -q 'dry run done'
bash bench/gpu.sh --dry-run --cpu-smoke | grep -q 'specprune_bench model'
if bash bench/gpu.sh --no-such-flag 2>/dev/null; then exit 1; fi
w=$(mktemp -d); mkdir $w/work $w/out
MODE=gpu /usr/bin/python3 bench/gpu_summary.py $w/work $w/out > $w/summary.txt
grep -q 'Overall: FAIL' $w/summary.txt
grep -q 'Floors: 0 of 6 hold, 0 fail, 6 not measured' $w/summary.txt
test -s $w/out/gpu_results.json; rm -rf $w
if command -v shellcheck >/dev/null; then shellcheck -x bench/gpu.sh bench/gpu_steps.sh bench/gpu_carry.sh; fi"
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(gpu_script_syntax PROPERTIES LABELS "unit;deploy" TIMEOUT 60)
