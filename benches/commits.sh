#!/bin/bash
# Few, large commits (issue 20): the 4-minute demo at 12,000 events/s with the
# example job's default batching, then per table its log versions and data
# files, and three timings of `weir query "SELECT count(*) FROM raw"` with no
# `weir maintain` in between. Usage (after `cargo build --release`):
#   benches/commits.sh [RUN_NAME]    # tables go to /tmp/weir-commits-RUN_NAME
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
weir=${CARGO_TARGET_DIR:-$root/target}/release/weir
data=/tmp/weir-commits-${1:-1}
rm -rf "$data"
/usr/bin/time -f "demo %e s, peak RSS %M KiB" "$weir" demo --rate 12000 --seconds 240 \
    --data "$data" 2>&1 | grep -E "check:|peak RSS"
for table in raw dlq late page_views revenue purchases; do
    dir=$data/hot/clickstream/$table
    echo "$table: $(ls "$dir/_delta_log" | grep -c '\.json$') log versions," \
        "$(find "$dir" -name '*.parquet' -not -path '*_delta_log*' | wc -l) data files"
done
for _ in 1 2 3; do
    /usr/bin/time -f "count(*) over raw: %e s, peak RSS %M KiB" "$weir" query \
        --job "$root/jobs/clickstream.toml" --data "$data" "SELECT count(*) FROM raw" 2>&1 \
        | grep -E "count\(\*\) over raw|^\| [0-9]"
done
