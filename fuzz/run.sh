#!/usr/bin/env bash
# Builds the libFuzzer harnesses and runs each for SECONDS: first every input in fuzz/regressions/<harness>/ once (inputs
# that crashed or hung before a fix), then fuzzing from the checked-in seeds in fuzz/seeds/<harness>/.
#
#   fuzz/run.sh SECONDS [--fresh] [harness ...]
#
# --fresh fuzzes into a temporary corpus (what `make fuzz-smoke` does, so `make test` does not depend on earlier runs);
# without it new inputs accumulate in build/fuzz/corpus/<harness>/ across runs. Crashes, leaks, timeouts and
# out-of-memory inputs are saved under build/fuzz/artifacts/<harness>/ and make the script fail. Prints one line of
# figures per harness: executions, corpus size, crashes.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: fuzz/run.sh SECONDS [--fresh] [harness ...]}
shift
fresh=0
if [ "${1:-}" = "--fresh" ]; then fresh=1; shift; fi
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(fuzz_json fuzz_safetensors fuzz_safetensors_index fuzz_image fuzz_image_views
                                         fuzz_image_msan)

make -s -C fuzz "${harnesses[@]/#/../build/fuzz/}" || exit 1

# The harnesses that read files write them here; tmpfs keeps that from dominating the run time.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
export EC_FUZZ_TMP
EC_FUZZ_TMP=$(mktemp -d "$base/eyecare-fuzz.XXXXXX")
scratch=$(mktemp -d)
trap 'rm -rf "$EC_FUZZ_TMP" "$scratch"' EXIT
# Leaks are errors (detect_leaks is on by default for libFuzzer with ASan); UBSan options are built in (common.c).

export ASAN_OPTIONS=${ASAN_OPTIONS:-}

max_len() {
    case $1 in
    fuzz_json) echo 16384 ;;
    fuzz_image_views) echo 4096 ;;
    *) echo 65536 ;;
    esac
}
dict() {
    case $1 in
    fuzz_json | fuzz_safetensors*) echo "-dict=fuzz/dict/json.dict" ;;
    fuzz_image | fuzz_image_msan) echo "-dict=fuzz/dict/image.dict" ;;
    esac
}
seeds() { # the MSan build of the image harness reads the same inputs as the ASan one
    case $1 in
    fuzz_image_msan) echo fuzz/seeds/fuzz_image ;;
    *) echo "fuzz/seeds/$1" ;;
    esac
}

failed=0
summary=()
for h in "${harnesses[@]}"; do
    bin=build/fuzz/$h
    logs=build/fuzz/logs
    artifacts=build/fuzz/artifacts/$h/
    mkdir -p "$logs" "$artifacts"
    log=$logs/$h.log
    : >"$log"
    regressions=(fuzz/regressions/$h/*)
    if [ -e "${regressions[0]}" ]; then
        if ! "$bin" -timeout=10 -rss_limit_mb=2048 "${regressions[@]}" >>"$log" 2>&1; then
            echo "$h: a regression input crashes or hangs again:"
            tail -40 "$log"
            failed=1
            summary+=("$h: REGRESSION")
            continue
        fi
    fi
    if [ $fresh = 1 ]; then corpus=$scratch/$h; else corpus=build/fuzz/corpus/$h; fi
    mkdir -p "$corpus"
    "$bin" "$corpus" "$(seeds "$h")" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len="$(max_len "$h")" $(dict "$h") -artifact_prefix="$artifacts" -print_final_stats=1 \
        -print_pcs=0 >>"$log" 2>&1
    status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | sed 's/corp: //')
    crashes=$(grep -c 'Test unit written to' "$log")
    line="$h: ${runs:-?} executions in ${seconds}s, corpus ${corp:-?} (inputs/bytes), $crashes crash reports"
    if [ $status -ne 0 ]; then
        failed=1
        line="$line -- FAILED (exit $status), inputs saved in $artifacts; log: $log"
        tail -60 "$log"
    fi
    echo "$line"
    summary+=("$line")
done
echo
printf '%s\n' "${summary[@]}"
exit $failed
