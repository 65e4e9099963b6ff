#!/usr/bin/env bash
# Runs RouteMQ's Jepsen-style fault tests (jepsen/): 5 nodes and a Mosquitto broker, each in
# its own network namespace on a private bridge, faults injected, every operation checked.
#
#   sudo scripts/jepsen.sh smoke                 # the CI smoke (~3.5 min): exit 1 on a regression
#   sudo scripts/jepsen.sh matrix                # every workload x nemesis, 60 s each (~35 min)
#   sudo scripts/jepsen.sh test --workload register --nemesis partition-majority --time-limit 60
#   scripts/jepsen.sh check jepsen/store/<test>/<time>   # re-check a stored run (no root needed)
#   sudo scripts/jepsen.sh teardown              # remove leftovers of a run that was killed
#
# Everything after the command goes to routemq-jepsen (`scripts/jepsen.sh test --help`).
# Results: jepsen/store/<test>/<time>/{report.html,results.json,history.jsonl,nodes/*.log}.
# Exit status: 0 no regression (known limits, listed in jepsen/src/suite.rs, may show), 1 a
# check expected to pass failed, 2 the harness could not run a test, 130 interrupted.
# The workspace is built first (the same single build as scripts/test.sh, so after it CI
# builds nothing twice); the routemq binary is $ROUTEMQ_BIN_DIR/routemq when that is set,
# else $CARGO_TARGET_DIR/debug/routemq.
set -euo pipefail
cd "$(dirname "$0")/.."
user_bin_dir="${ROUTEMQ_BIN_DIR:-}"
. scripts/lib/common.sh

cmd="${1:-}"
case "$cmd" in
    test | smoke | matrix | check | teardown) ;;
    "" | -h | --help | help)
        sed -n '2,/^set -e/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown command '$cmd' (test, smoke, matrix, check, teardown)" ;;
esac

if [ "$cmd" != check ] && [ "$(id -u)" != 0 ]; then
    die "the fault tests must run as root: they create network namespaces, veth pairs and iptables rules (try: sudo $0 $*)"
fi

if [ "$cmd" != check ] && [ "$cmd" != teardown ]; then
    ensure_test_deps
    command -v iptables >/dev/null 2>&1 || apt_install iptables
fi
# Always the one workspace build (same features as scripts/test.sh, so after it nothing is
# rebuilt, and RocksDB is never compiled twice for a different feature set).
build_all
export ROUTEMQ_BIN_DIR="${user_bin_dir:-$CARGO_TARGET_DIR/debug}"
[ "$cmd" = check ] || [ "$cmd" = teardown ] || [ -x "$ROUTEMQ_BIN_DIR/routemq" ] \
    || die "no routemq binary in $ROUTEMQ_BIN_DIR"
# exec: Ctrl-C and SIGTERM reach the harness, which tears the network down before exiting.
exec "$CARGO_TARGET_DIR/debug/routemq-jepsen" "$@"
