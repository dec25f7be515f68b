#!/usr/bin/env bash
# The whole test suite: Rust unit tests and mock-cluster tests (cargo test),
# then the end-to-end tests against a real Kafka-protocol broker process (tansu)
# with the tables read back by DuckDB and polars (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}
export WEIR_VENV=${WEIR_VENV:-$HOME/.cache/weir-venv}
export WEIR_BIN=$CARGO_TARGET_DIR/debug/weir

integration/setup.sh
cargo build --bin weir
cargo test
"$WEIR_VENV/bin/python" -m pytest integration -v -p no:cacheprovider "$@"
