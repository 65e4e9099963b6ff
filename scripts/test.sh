#!/usr/bin/env bash
# Runs RouteMQ's tests: formatting and lints, unit, property and scenario tests, and the
# multi-process integration tests (real routemq processes on loopback).
#
#   ./scripts/test.sh            everything CI runs
#   ./scripts/test.sh -- ring    extra arguments go to the test runner (a filter, for instance)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
ensure_test_deps

say "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"

# One build serves every stage, clippy's lints included (warnings are errors); the tests run
# the binaries of this build.
say "clippy lints in the build (warnings are errors)"
use_clippy_in_build
build_all
export ROUTEMQ_BIN_DIR

shift_args=()
if [ "${1:-}" = "--" ]; then shift; shift_args=("$@"); fi

if cargo nextest --version >/dev/null 2>&1; then
    say "cargo nextest run"
    cargo nextest run --locked --workspace --no-fail-fast "${shift_args[@]}"
else
    say "cargo test (install cargo-nextest for faster, isolated runs)"
    cargo test --locked --workspace --no-fail-fast "${shift_args[@]}"
fi
