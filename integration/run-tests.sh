#!/usr/bin/env bash
# The whole test suite: Rust unit tests and mock-cluster tests (cargo test),
# then the end-to-end tests against Apache Kafka with the tables read back by
# DuckDB, polars, Spark, Trino and ClickHouse (pytest). See the README's Testing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}
export WEIR_VENV=${WEIR_VENV:-$HOME/.cache/weir-venv}
export WEIR_BIN=$CARGO_TARGET_DIR/debug/weir

integration/setup.sh

# One arrow (and parquet) in the dependency tree: deltalake pins them, and a second
# copy would make Arrow types from one crate unusable in the other.
if cargo tree --duplicates --edges normal --depth 0 | grep -E '^(arrow|parquet)(-[a-z]+)? v'; then
  echo "run-tests.sh: more than one arrow/parquet version in the dependency tree" >&2
  exit 1
fi

# --all-targets also runs each criterion bench once, so a broken bench fails here.
# It builds the `weir` binary too ($WEIR_BIN), which pytest drives.
cargo test --all-targets
# The module docs are the map of the code (README, Layout): a link that no
# longer resolves fails here.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet
# Two files at a time: most of a test is waiting (brokers, JVMs, triggers), and a
# file's tests share its fixtures, so files (not tests) are spread over the workers.
"$WEIR_VENV/bin/python" -m pytest integration -n 2 --dist loadfile -v -p no:cacheprovider "$@"
