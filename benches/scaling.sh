#!/bin/bash
# How one weir process scales with cores (issue 20): `weir bench` at
# 10,000-event batches pinned with taskset to 1, 2, 4, … cores up to all of
# them, RUNS times each, interleaved so the machine's drift falls on all alike.
# Prints throughput and its ratio to the raw consume rate of the same run; the
# CSVs go to /tmp/weir-scaling. Usage (after `cargo build --release`):
#   benches/scaling.sh [RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
weir=${CARGO_TARGET_DIR:-$root/target}/release/weir
out=/tmp/weir-scaling
mkdir -p "$out"
all=$(nproc)
counts=()
for ((n = 1; n < all; n *= 2)); do counts+=("$n"); done
counts+=("$all")
for run in $(seq 1 "${1:-3}"); do
    for n in "${counts[@]}"; do
        csv=$out/cores-$n-$run.csv
        taskset -c "0-$((n - 1))" "$weir" bench --batch-sizes 10000 --seconds-per-point 5 \
            --csv "$csv" --png "$out/cores-$n-$run.png" >/dev/null 2>&1
        tail -1 "$csv" | awk -F, -v n="$n" -v run="$run" \
            '{printf "cores %2d run %d: %8d events/s, %5.1f %% of raw consume (%d)\n", n, run, $2, 100 * $4, $3}'
    done
done
