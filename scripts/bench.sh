#!/usr/bin/env bash
# The message-path benchmark, on demand (not CI): one run, figures side by side.
#
#   ./scripts/bench.sh                 build (unless BENCH_SKIP_BUILD=1), run, print the table
#
# Everything runs on this machine on loopback addresses 127.0.77.x and is stopped on exit:
#   (b)  Mosquitto alone: MQTT producers -> Mosquitto -> one rumqttc subscriber (QoS 1)
#        (`routemq-ctl bench --broker-only`, no RouteMQ node);
#   (c)  3-node cluster: MQTT QoS 1 producers -> Mosquitto -> the ordered route's ingress on
#        one node (keys concurrently, each key in order) -> the key's owner -> journal handler
#        (fsync per message);
#        then gRPC `Publish` from the same producers into the same cluster and route;
#   (a)  one node (no forwarding): the same as (c) on a single-node cluster.
# Every cluster run is verified: every journal is read back and checked for lost, duplicated
# and reordered messages per key. The figure compared is the delivery rate: distinct messages
# delivered (journaled, or received by the subscriber) per second from the first publish to
# the last delivery.
#
# Knobs (environment): BENCH_MESSAGES (MQTT and gRPC runs into the cluster, default 5000),
# BENCH_BROKER_MESSAGES (broker-only run, default 100000), BENCH_KEYS (100), BENCH_PRODUCERS
# (4), BENCH_CONCURRENCY (32: MQTT window / gRPC lanes per producer), BENCH_PAYLOAD (100
# bytes), BENCH_PROFILE (debug or release: which build to run, default debug),
# BENCH_BROKER_INFLIGHT (Mosquitto's max_inflight_messages, default 20 like Mosquitto's own
# default; Mosquitto 2.0.11 did not hold the ordered route's ingress to it),
# BENCH_ORDERED_IN_FLIGHT (the nodes' --mqtt-ordered-in-flight; 1 dispatches one message at a
# time, as the ordered ingress did before),
# BENCH_SKIP_BUILD=1, BENCH_KEEP=1 (keep the work directory), ROUTEMQ_BIN_DIR (run the
# routemq and routemq-ctl found there instead of $CARGO_TARGET_DIR/<profile>). Each step is
# bounded by BENCH_STEP_TIMEOUT seconds (default 900).
set -euo pipefail
cd "$(dirname "$0")/.."
user_bin_dir="${ROUTEMQ_BIN_DIR:-}"
. scripts/lib/common.sh

messages=${BENCH_MESSAGES:-5000}
broker_messages=${BENCH_BROKER_MESSAGES:-100000}
keys=${BENCH_KEYS:-100}
producers=${BENCH_PRODUCERS:-4}
concurrency=${BENCH_CONCURRENCY:-32}
payload=${BENCH_PAYLOAD:-100}
profile=${BENCH_PROFILE:-debug}
step_timeout=${BENCH_STEP_TIMEOUT:-900}
broker_inflight=${BENCH_BROKER_INFLIGHT:-20}
node_args=()
[ -z "${BENCH_ORDERED_IN_FLIGHT:-}" ] || node_args=(--mqtt-ordered-in-flight "$BENCH_ORDERED_IN_FLIGHT")

command -v jq >/dev/null 2>&1 || die "jq is needed to read the reports (apt-get install jq)"
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
mosquitto_bin=$(command -v mosquitto || true)
[ -n "$mosquitto_bin" ] || { [ -x /usr/sbin/mosquitto ] && mosquitto_bin=/usr/sbin/mosquitto; } || true
[ -n "$mosquitto_bin" ] || die "mosquitto not found (apt-get install mosquitto)"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    ensure_build_deps
    if [ "$profile" = release ]; then
        cargo build --locked --release -p routemq-node -p routemq-client --bins
    else
        build_all
    fi
fi
bin_dir="${user_bin_dir:-$CARGO_TARGET_DIR/$profile}"
ROUTEMQ="$bin_dir/routemq"
CTL="$bin_dir/routemq-ctl"
[ -x "$ROUTEMQ" ] && [ -x "$CTL" ] || die "no binaries in $bin_dir (build first)"

net=127.0.77
broker="$net.100:1883"
for addr in "$net.100:1883" "$net.1:7001" "$net.2:7001" "$net.3:7001" "$net.11:7001"; do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
        die "$addr is in use (another bench still running?)"
    fi
done

work=$(mktemp -d /tmp/routemq-bench.XXXXXX)
pids=()
stop_pids() {
    [ "${#pids[@]}" -gt 0 ] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local waited=0
    while [ $waited -lt 100 ] && kill -0 "${pids[@]}" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}
broker_pid=
cleanup() {
    stop_pids
    if [ -n "$broker_pid" ]; then
        kill -TERM "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Mosquitto: like deploy/mosquitto (in-flight window 20, the default), without disk
# persistence, and a queue deep enough for the whole run (ordered routes queue at the broker).
{
    echo "listener 1883 $net.100"
    echo "allow_anonymous true"
    echo "persistence false"
    echo "max_queued_messages 1000000"
    echo "max_inflight_messages $broker_inflight"
    echo "log_dest file $work/mosquitto.log"
    echo "log_type error"
    echo "log_type warning"
    [ "$(id -u)" = 0 ] && echo "user root"
} >"$work/mosquitto.conf"
say "starting Mosquitto on $broker"
"$mosquitto_bin" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$net.100/1883") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/$net.100/1883") 2>/dev/null || die "Mosquitto did not start (see $work/mosquitto.log)"

common=(--keys "$keys" --producers "$producers" --concurrency "$concurrency" --payload-bytes "$payload")

# Runs `routemq-ctl ... bench ... --json` into $work/$1.json (a failed verification still
# writes its report; the table shows the verdict).
bench() {
    local name=$1; shift
    say "bench $name: routemq-ctl $*"
    timeout "$step_timeout" "$CTL" --timeout 60s --json "$@" >"$work/$name.json" 2>"$work/$name.err" || true
    jq -e .run_id "$work/$name.json" >/dev/null 2>&1 || { cat "$work/$name.err" >&2; die "bench $name produced no report"; }
    jq -r '"    \(.transport) \(.target): \(.messages_acked)/\(.messages_sent) acknowledged, delivered \(.delivery.throughput_per_s // 0 | floor) msg/s; \(.verify.summary // "not verified")"' "$work/$name.json" >&2
}

start_node() {
    local id=$1 ip=$2; shift 2
    "$ROUTEMQ" start --node-id "$id" --grpc "$ip:7001" --gossip "$ip:7101" --http "$ip:7201" \
        --data-dir "$work/$id" --mqtt "$broker" ${node_args[@]+"${node_args[@]}"} "$@" >"$work/$id.log" 2>&1 &
    pids+=($!)
}

wait_ready() {
    local started
    started=$(date +%s)
    for ip in "$@"; do
        until curl -fs "http://$ip:7201/ready" >/dev/null 2>&1; do
            for pid in "${pids[@]}"; do
                kill -0 "$pid" 2>/dev/null || { tail -n 20 "$work"/*.log >&2; die "a node exited; logs above"; }
            done
            [ $(($(date +%s) - started)) -lt 90 ] || die "nodes not ready after 90 s"
            sleep 0.2
        done
    done
}

# Adds the ordered journal route $2 on topics $3 through $1, then waits until its MQTT ingress
# takes messages: small verified runs until one passes (before the holder subscribed, the
# broker drops what nobody is subscribed to).
add_route() {
    local addr=$1 route=$2 template=$3 tries=0
    "$CTL" --addr "$addr" routes add "$route" --pattern "$template" --key-param key \
        --qos 1 --mode ordered --handler journal >/dev/null
    until "$CTL" --addr "$addr" --timeout 30s bench --route "$route" --topic-template "$template" \
        --transport mqtt --mqtt "$broker" --keys 2 --messages 20 --verify --settle 1s \
        --verify-timeout 10s >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ $tries -lt 10 ] || die "route $route never took MQTT messages"
        sleep 1
    done
}

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- (b) Mosquitto alone.
bench broker --addr "$net.1:7001" bench --broker-only --transport mqtt --mqtt "$broker" \
    --topic-template 'bb/{key}/data' --messages "$broker_messages" "${common[@]}" --settle 3s --verify-timeout 300s

# ---- (c) 3-node cluster.
say "starting a 3-node cluster on $net.1-3"
start_node n1 "$net.1" --bootstrap
start_node n2 "$net.2" --seed "$net.1:7101"
start_node n3 "$net.3" --seed "$net.1:7101"
wait_ready "$net.1" "$net.2" "$net.3"
until [ "$("$CTL" --addr "$net.1:7001" --json status 2>/dev/null | grep -o '"state":"active"' | wc -l)" = 3 ]; do
    sleep 0.2
done
add_route "$net.1:7001" b3 'b3/{key}/data'
bench cluster_mqtt --addr "$net.1:7001" bench --route b3 --topic-template 'b3/{key}/data' \
    --transport mqtt --mqtt "$broker" --messages "$messages" "${common[@]}" --verify --settle 5s --verify-timeout 600s
bench cluster_grpc --addr "$net.1:7001,$net.2:7001,$net.3:7001" bench --route b3 --topic-template 'b3/{key}/data' \
    --transport grpc --messages "$messages" "${common[@]}" --verify --settle 5s --verify-timeout 120s
holder=
for ip in "$net.1" "$net.2" "$net.3"; do
    if curl -fs "http://$ip:7201/metrics" 2>/dev/null | grep '^routemq_mqtt_acks_total{.*route="b3"' >/dev/null; then
        holder=$ip
    fi
done
say "stopping the 3-node cluster"
stop_pids

# ---- (a) One node: no forwarding.
say "starting a single-node cluster on $net.11"
start_node s1 "$net.11" --bootstrap
wait_ready "$net.11"
add_route "$net.11:7001" b1 'b1/{key}/data'
bench single_mqtt --addr "$net.11:7001" bench --route b1 --topic-template 'b1/{key}/data' \
    --transport mqtt --mqtt "$broker" --messages "$messages" "${common[@]}" --verify --settle 5s --verify-timeout 600s
bench single_grpc --addr "$net.11:7001" bench --route b1 --topic-template 'b1/{key}/data' \
    --transport grpc --messages "$messages" "${common[@]}" --verify --settle 5s --verify-timeout 120s
stop_pids

# ---- The table.
rate() { jq -r '.delivery.throughput_per_s // 0' "$work/$1.json"; }
row() {
    local name=$1 label=$2
    jq -r --arg title "$label" '
        def ms: if . == null then "-" else (. / 100 | round / 10 | tostring) end;
        [$title,
         "\(.delivery.delivered // 0)/\(.messages_sent)",
         (.delivery.throughput_per_s // 0 | floor | tostring),
         (.delivery.latency_us.p50 | ms),
         (.delivery.latency_us.p99 | ms),
         (if .ack == "cluster" then "\(.latency_us.p50 | ms)/\(.latency_us.p99 | ms)" else "-" end),
         (.verify.verdict // "-"),
         "lost \(.verify.lost // "-") dup \(.verify.duplicates // "-") reord \(.verify.reordered // "-")"]
        | @tsv' "$work/$name.json"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }
b=$(rate broker)
c=$(rate cluster_mqtt)
a=$(rate single_mqtt)
cg=$(rate cluster_grpc)
ag=$(rate single_grpc)

echo
echo "RouteMQ message-path bench ($profile build), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, ${payload}-byte payloads,"
echo "$keys keys, $producers producers x $concurrency in flight; ordered route, journal handler (fsync per message);"
echo "load average when the run started: $load_at_start."
echo "msg/s = distinct messages delivered per second from the first publish to the last delivery;"
echo "latency = publish to delivery (journal timestamps: ms precision); ack = gRPC publish to cluster answer (ms)."
{
    printf 'setup\tdelivered\tmsg/s\tp50 ms\tp99 ms\tack p50/p99 ms\tverify\tper key\n'
    row broker "(b) Mosquitto -> 1 rumqttc subscriber"
    row cluster_mqtt "(c) 3 nodes, MQTT QoS 1 via Mosquitto"
    row single_mqtt "(a) 1 node, MQTT QoS 1 via Mosquitto"
    row cluster_grpc "    3 nodes, gRPC Publish"
    row single_grpc "    1 node, gRPC Publish"
} | column -t -s $'\t'
echo
echo "ratios: (c)/(b) = $(ratio "$c" "$b")   (a)/(b) = $(ratio "$a" "$b")   (c)/(a) = $(ratio "$c" "$a")   gRPC 3 nodes / 1 node = $(ratio "$cg" "$ag")"
echo "the ordered route's MQTT ingress (one connection; keys concurrently, each in order; broker in-flight window $broker_inflight; --mqtt-ordered-in-flight ${BENCH_ORDERED_IN_FLIGHT:-default}) ran on ${holder:-?}"
