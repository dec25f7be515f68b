#!/bin/bash
# How one weir process scales with cores (issue 20): `weir bench` at
# 10,000-event batches pinned with taskset to 1, 2, 4, … cores up to all of
# them, RUNS times each, interleaved so the machine's drift falls on all alike.
# Prints throughput, its ratio to the raw consume rate of the same run and the
# process's peak RSS; the CSVs, peak RSS and each run's debug log (every batch's
# and trigger's stage times: `benches/stages.py` sums them up) go to $OUT
# (default /tmp/weir-scaling).
# Usage (after `cargo build --release`):
#   [WEIR_BIN=path] [CORES="2 16"] benches/scaling.sh [RUNS] [weir bench options…]
# e.g. `benches/scaling.sh 3 --partitions 16 --backlog 1000000`: the embedded
# broker keeps a few MiB per partition, so a long drain needs many partitions.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
weir=${WEIR_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/weir}
out=${OUT:-/tmp/weir-scaling}
runs=${1:-3}
shift || true
mkdir -p "$out"
if [[ -z ${CORES:-} ]]; then
    all=$(nproc)
    CORES=""
    for ((n = 1; n < all; n *= 2)); do CORES+="$n "; done
    CORES+="$all"
fi
peak_rss='import resource, subprocess, sys
subprocess.run(sys.argv[2:], check=True)
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024))'
for run in $(seq 1 "$runs"); do
    for n in $CORES; do
        name=$out/cores-$n-$run
        # python3 waits for the bench and reads its peak RSS (getrusage of
        # its children: weir, the embedded broker's backlog included).
        RUST_LOG=weir=debug python3 -c "$peak_rss" "$name.rss" \
            taskset -c "0-$((n - 1))" "$weir" bench --batch-sizes 10000 \
            --seconds-per-point 5 --csv "$name.csv" --png "$name.png" "$@" \
            >/dev/null 2>"$name.log"
        tail -1 "$name.csv" | awk -F, -v n="$n" -v run="$run" -v rss="$(cat "$name.rss")" \
            '{printf "cores %2d run %d: %8d events/s, %5.1f %% of raw consume (%d), peak RSS %d MiB\n", n, run, $2, 100 * $4, $3, rss}'
    done
done
