#!/bin/bash
# Reprocess and verify in bounded memory (issue 20, item 6): a demo history of
# SECONDS x RATE events over 3 days, then `weir reprocess --dry-run` and
# `weir verify` of the day before yesterday (a third of the events) at several
# --memory-mib, RUNS times each, interleaved. Prints the day's size as Arrow,
# peak RSS (GNU time) and wall time. Usage (after `cargo build --release`):
#   benches/reprocess_memory.sh [RUNS] [SECONDS] [RATE]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
weir=${WEIR:-${CARGO_TARGET_DIR:-$root/target}/release/weir}
job=$root/jobs/clickstream.toml
out=/tmp/weir-reprocess-memory
rm -rf "$out" && mkdir -p "$out"
"$weir" demo --job "$job" --seconds "${2:-60}" --rate "${3:-100000}" --partitions 8 \
    --backfill 3days --data "$out/data" >"$out/demo.txt" 2>"$out/demo.log"
day=$(date -u -d "2 days ago" +%F)
for run in $(seq 1 "${1:-3}"); do
    for mib in 16 64 1024; do
        for command in reprocess verify; do
            extra=()
            [ "$command" = reprocess ] && extra=(--dry-run)
            /usr/bin/time -f "%e %M" -o "$out/time" "$weir" "$command" --job "$job" \
                --data "$out/data" --from "$day" --to "$day" --memory-mib "$mib" "${extra[@]}" \
                >"$out/report.txt" 2>"$out/run.log"
            read -r seconds kib <"$out/time"
            size=$(grep -o 'the largest day [0-9]* MiB' "$out/report.txt" | grep -o '[0-9]*')
            printf '%-9s run %d --memory-mib %4d: a day of %5d MiB, peak RSS %5d MiB, %6.1f s\n' \
                "$command" "$run" "$mib" "$size" $((kib / 1024)) "$seconds"
        done
    done
done
