#!/usr/bin/env bash
# Instructions per event of the windows and word-count contestants, under callgrind.
#
#   benches/instructions.sh [windows|word_count|all] [prose]
#
# Each contestant runs once at two input sizes (FLOWSTAGE_BENCH_ONE: the bench binary
# runs one contestant and prints its summary); the difference of the two instruction
# counts over the difference of the events leaves out what a run costs whatever its
# size (start-up, thread spawns). Windows: 1 M and 3 M events. Word count: the first
# 8 MB and 24 MB of `prose` (default: the bench's 531 MB prose in target/wc-data),
# per word. Callgrind runs threads one at a time: the figures count work, not time.
# Needs valgrind. See benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
prose=${2:-target/wc-data/prose-500mb.txt}

# The path of bench binary $1, built in release.
binary() {
    cargo bench --bench "$1" --no-run 2>&1 |
        sed -n "s/.*Executable benches\/$1.rs (\(.*\))/\1/p" | tail -1
}

# Collected instructions of one callgrind run of "$@".
instructions() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_event() { # per_event NAME EVENTS_SMALL IR_SMALL EVENTS_LARGE IR_LARGE
    awk -v n="$1" -v e1="$2" -v i1="$3" -v e2="$4" -v i2="$5" \
        'BEGIN { printf "%-28s %8.1f\n", n, (i2 - i1) / (e2 - e1) }'
}

if [[ $which == windows || $which == all ]]; then
    bin=$(binary windows)
    echo "windows: instructions per event (3 M - 1 M events)"
    for c in sequential hand_made_threads flowstage flowstage_interleaved flowstage_one_source; do
        small=$(FLOWSTAGE_BENCH_ONE=$c:1000000 instructions "$bin")
        large=$(FLOWSTAGE_BENCH_ONE=$c:3000000 instructions "$bin")
        per_event "$c" 1000000 "$small" 3000000 "$large"
    done
fi

if [[ $which == word_count || $which == all ]]; then
    bin=$(binary word_count)
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    head -c 8000000 "$prose" >"$dir/small.txt"
    head -c 24000000 "$prose" >"$dir/large.txt"
    words() { # words FILE: the number of words the bench counts in FILE
        FLOWSTAGE_WC_INPUT=$1 FLOWSTAGE_BENCH_ONE=sequential "$bin" |
            sed -n 's/.*(\([0-9]*\) words.*/\1/p'
    }
    w1=$(words "$dir/small.txt")
    w2=$(words "$dir/large.txt")
    echo "word_count: instructions per word (24 MB - 8 MB of $prose)"
    for c in sequential rayon flowstage_combiner hand_made_literal flowstage_literal; do
        small=$(FLOWSTAGE_WC_INPUT=$dir/small.txt FLOWSTAGE_BENCH_ONE=$c instructions "$bin")
        large=$(FLOWSTAGE_WC_INPUT=$dir/large.txt FLOWSTAGE_BENCH_ONE=$c instructions "$bin")
        per_event "$c" "$w1" "$small" "$w2" "$large"
    done
fi
