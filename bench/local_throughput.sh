#!/usr/bin/env bash
# Throughput and latency of `taskbeat local` on the embedded SQLite store.
# Builds with the bench-release profile (opt-level 3, symbols kept for perf) and runs the
# benchmark; arguments are passed through (try --help, --json, --tasks 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile bench-release -p taskbeat-bench
exec target/bench-release/local_throughput "$@"
