#!/usr/bin/env bash
# Starts a local 3-node RouteMQ cluster on loopback and shows it working.
#
#   ./scripts/cluster.sh          start, show status, keep running until Ctrl-C
#   ./scripts/cluster.sh --exit   start, show status, stop (a smoke check)
#
# Node i (1..3) listens on gRPC 127.0.0.1:700i, gossip 127.0.0.1:710i (UDP), HTTP
# 127.0.0.1:720i; data and logs go to data/local-cluster/ (wiped at every start).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

exit_after=0
[ "${1:-}" = "--exit" ] && exit_after=1

ensure_build_deps
build_all
ROUTEMQ="$ROUTEMQ_BIN_DIR/routemq"
CTL="$ROUTEMQ_BIN_DIR/routemq-ctl"

for port in 7001 7002 7003 7201 7202 7203; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use (another local cluster still running?)"
    fi
done

dir=data/local-cluster
rm -rf "$dir"
mkdir -p "$dir"
pids=()
stop_all() {
    [ "${#pids[@]}" -gt 0 ] || return 0
    say "stopping the cluster (SIGTERM)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start_node() {
    local i=$1; shift
    "$ROUTEMQ" start --node-id "n$i" \
        --grpc "127.0.0.1:700$i" --gossip "127.0.0.1:710$i" --http "127.0.0.1:720$i" \
        --data-dir "$dir/n$i" "$@" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
}

say "starting n1 (bootstraps a new cluster)"
start_node 1 --bootstrap
say "starting n2 and n3 (join through n1's gossip address)"
start_node 2 --seed 127.0.0.1:7101
start_node 3 --seed 127.0.0.1:7101

say "waiting until all three nodes are ready"
started=$(date +%s)
for i in 1 2 3; do
    until curl -fs "http://127.0.0.1:720$i/ready" >/dev/null 2>&1; do
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir"/n*.log >&2; die "a node exited; logs above"; }
        done
        [ $(( $(date +%s) - started )) -lt 60 ] || { tail -n 20 "$dir"/n*.log >&2; die "cluster not ready after 60 s"; }
        sleep 0.2
    done
done
# Readiness is local to each node; wait until gossip shows every member active everywhere.
until [ "$("$CTL" --addr 127.0.0.1:7001 --json status 2>/dev/null | grep -o '"state":"active"' | wc -l)" = 3 ]; do
    [ $(( $(date +%s) - started )) -lt 60 ] || die "members not all active after 60 s"
    sleep 0.2
done
say "cluster formed in $(( $(date +%s) - started )) s"

say "routemq-ctl --addr 127.0.0.1:7002 status"
"$CTL" --addr 127.0.0.1:7002 status
say "routemq-ctl --addr 127.0.0.1:7003 partitions"
"$CTL" --addr 127.0.0.1:7003 partitions
for key in device-42 device-7 sensor-1; do
    say "routemq-ctl --addr 127.0.0.1:7001 locate $key"
    "$CTL" --addr 127.0.0.1:7001 locate "$key"
done
say "every node answers the same (local read on each node):"
for i in 1 2 3; do
    printf 'n%s: ' "$i"; "$CTL" --addr "127.0.0.1:700$i" --local --json locate device-42
done
say "health and metrics: curl http://127.0.0.1:7201/ready ; curl http://127.0.0.1:7201/metrics"
curl -fs http://127.0.0.1:7201/ready; echo

if [ "$exit_after" = 1 ]; then
    exit 0
fi
say "the cluster is running; logs in $dir/. Try:"
echo "    $CTL --addr 127.0.0.1:7001 status"
echo "    $CTL --addr 127.0.0.1:7002 locate my-device"
echo "    kill -9 ${pids[0]}   # kill the first node, then ask status again"
say "Ctrl-C stops the cluster"
wait "${pids[@]}" || true
