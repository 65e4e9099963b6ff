#!/usr/bin/env bash
# Starts a local 3-node RouteMQ cluster behind a real Mosquitto broker on loopback and shows
# it doing its job: MQTT messages of an ordered journal route go through the cluster to their
# key's owner and are read back from the journals.
#
#   ./scripts/cluster.sh          start, show it working, keep running until Ctrl-C
#   ./scripts/cluster.sh --exit   start, show it working, stop (a smoke check)
#
# Node i (1..3) listens on gRPC 127.0.0.1:700i, gossip 127.0.0.1:710i (UDP), HTTP
# 127.0.0.1:720i; Mosquitto on 127.0.0.1:18830 (MQTT_PORT to change it); data and logs go to
# data/local-cluster/ (wiped at every start).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

exit_after=0
[ "${1:-}" = "--exit" ] && exit_after=1

ensure_build_deps
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
command -v mosquitto_pub >/dev/null 2>&1 || apt_install mosquitto-clients
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
MQTT_PORT="${MQTT_PORT:-18830}"
build_all
ROUTEMQ="$ROUTEMQ_BIN_DIR/routemq"
CTL="$ROUTEMQ_BIN_DIR/routemq-ctl"

for port in 7001 7002 7003 7201 7202 7203 "$MQTT_PORT"; do
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
        --mqtt "127.0.0.1:$MQTT_PORT" \
        --data-dir "$dir/n$i" "$@" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
}

say "starting Mosquitto on 127.0.0.1:$MQTT_PORT"
mkdir -p "$dir/mosquitto"
cat >"$dir/mosquitto/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $PWD/$dir/mosquitto/
max_queued_messages 100000
CONF
"$MOSQUITTO" -c "$dir/mosquitto/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null || { cat "$dir/mosquitto.log" >&2; die "Mosquitto did not start"; }

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

# The main job: devices publish over MQTT; each device's messages go, in order, to the node
# that owns its key, whichever node the broker delivered them to.
route_cmd=("$CTL" --addr 127.0.0.1:7001 routes add telemetry --pattern 'sensors/{device_id}/data'
    --key-param device_id --qos 1 --mode ordered --handler journal --message-id-field /id)
say "${route_cmd[*]}"
"${route_cmd[@]}"
# The route's ordered ingress is held by one node (the owner of its `$ingress/telemetry`
# partition); /ready counts its MQTT connection once it is up (it subscribes right after).
held_by=""
until [ -n "$held_by" ]; do
    for i in 1 2 3; do
        if curl -fs "http://127.0.0.1:720$i/ready" 2>/dev/null \
            | grep -q '"mqtt":{"connections":1,"connected":1'; then
            held_by="n$i"
        fi
    done
    [ $(( $(date +%s) - started )) -lt 90 ] || { tail -n 30 "$dir"/n*.log >&2; die "no node subscribed to the route"; }
    sleep 0.2
done
say "the route's MQTT ingress is held by $held_by"
sleep 1
say "mosquitto_pub: 5 messages each from device-42 and device-7 (QoS 1)"
for n in 1 2 3 4 5; do
    for device in device-42 device-7; do
        mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -i "quickstart-$device" \
            -t "sensors/$device/data" -m "{\"id\":\"$device-$n\",\"temp\":$((20 + n))}"
    done
done
for device in device-42 device-7; do
    want=5
    until [ "$("$CTL" --addr 127.0.0.1:7002 --json journal "$device" --route telemetry 2>/dev/null | grep -o '"offset"' | wc -l)" -ge "$want" ]; do
        [ $(( $(date +%s) - started )) -lt 120 ] || { tail -n 30 "$dir"/n*.log >&2; die "the messages of $device did not reach its journal"; }
        sleep 0.2
    done
    say "routemq-ctl locate $device ; routemq-ctl journal $device --route telemetry (asked of n2)"
    "$CTL" --addr 127.0.0.1:7002 locate "$device"
    "$CTL" --addr 127.0.0.1:7002 journal "$device" --route telemetry
done

say "web console: http://127.0.0.1:7201/ui (any node's HTTP address; hot keys: $CTL hot-keys --route telemetry)"

if [ "$exit_after" = 1 ]; then
    exit 0
fi
say "the cluster is running; logs in $dir/. Try:"
echo "    $CTL --addr 127.0.0.1:7001 status"
echo "    $CTL --addr 127.0.0.1:7002 locate my-device"
echo "    mosquitto_pub -p $MQTT_PORT -q 1 -t sensors/my-device/data -m '{\"id\":\"m1\",\"temp\":20}'"
echo "    $CTL --addr 127.0.0.1:7003 journal my-device --route telemetry"
echo "    kill -9 ${pids[0]}   # kill the first node, then ask status again"
say "Ctrl-C stops the cluster"
wait "${pids[@]}" || true
