#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR/../..
# Plays the StatefulSet of statefulset.yaml with plain Docker on this machine (no Kubernetes
# here): each "pod" routemq-N runs the manifest's init container (decide-bootstrap) and then its
# main container, with the manifest's command, args, env and the ConfigMaps' files, on one
# network where routemq-N.routemq-headless resolves to the pod (the headless Service) and
# routemq-N to a fixed address (standing in for the pod's own Service, pod-services.yaml).
#
#   1. first install: 3 pods start in parallel (podManagementPolicy Parallel); exactly one
#      cluster forms, bootstrapped by routemq-0;
#   2. routemq-0 loses its volume: the init container sees live members and it joins them
#      (same cluster id) instead of founding a second cluster;
#   3. rolling restart (highest ordinal first, like a StatefulSet update): every pod comes back
#      with the same raft id, the cluster stays whole.
#
#   deploy/k8s/simulate-in-docker.sh [--no-build]    (builds routemq:local first unless --no-build)
#
# Tears everything down at the end, also on failure. Ends with "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/lib.sh

build=1
[ "${1:-}" = --no-build ] && build=0
need docker
image="${ROUTEMQ_IMAGE:-routemq:local}"
prefix="${ROUTEMQ_SIM_SUBNET_PREFIX:-172.28.158}"
net=routemq-k8s-sim
started=$(date +%s)
passed=0
failed=0
pass() { passed=$((passed + 1)); printf '\033[32mPASS\033[0m %s\n' "$*"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/routemq-k8s-sim.XXXXXX")

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" != 0 ]; then
        failed=$((failed + 1))
        for c in $(docker ps -aq --filter "label=routemq-k8s-sim"); do
            say "logs of $(docker inspect -f '{{.Name}}' "$c")"
            docker logs --tail 15 "$c" 2>&1 | cut -c1-300 >&2
        done
    fi
    docker ps -aq --filter "label=routemq-k8s-sim" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker volume ls -q --filter "label=routemq-k8s-sim" | xargs -r docker volume rm >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    rm -rf "$work"
    printf '%s passed, %s failed\n' "$passed" "$failed"
    say "simulation took $(( $(date +%s) - started )) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$build" = 1 ]; then
    deploy/build-local-image.sh --skip-mosquitto --tag "$image"
fi
docker image inspect "$image" >/dev/null 2>&1 || die "no image $image (run deploy/build-local-image.sh)"

# Python with PyYAML: the system's, else validate.sh's virtualenv.
py=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
    deploy/k8s/validate.sh >/dev/null || die "deploy/k8s/validate.sh failed"
    py="${ROUTEMQ_K8S_VENV:-$HOME/.cache/routemq/k8s-validate-venv}/bin/python"
fi

# The manifest, flattened: ConfigMap files into $work, and shell-quoted arrays of the init
# command, main args and main env (with $(POD_NAME) left for each pod).
"$py" - "$work" >"$work/manifest.sh" <<'EOF'
import pathlib, shlex, sys, yaml
work = pathlib.Path(sys.argv[1])
docs = {}
for f in ("statefulset.yaml", "configmap.yaml"):
    for d in yaml.safe_load_all(open(f"deploy/k8s/{f}")):
        docs[(d["kind"], d["metadata"]["name"])] = d
for name in ("routemq-config", "routemq-routes"):
    (work / name).mkdir()
    for key, text in docs[("ConfigMap", name)]["data"].items():
        (work / name / key).write_text(text)
spec = docs[("StatefulSet", "routemq")]["spec"]["template"]["spec"]
init = next(c for c in spec["initContainers"] if c["name"] == "decide-bootstrap")
main = next(c for c in spec["containers"] if c["name"] == "routemq")
q = lambda xs: " ".join(shlex.quote(x) for x in xs)
print(f"init_command=({q(init['command'])})")
print(f"main_args=({q(main['args'])})")
env = [f"{e['name']}={e['value']}" for e in main["env"] if "value" in e]
print(f"main_env=({q(env)})")
EOF
init_command=()
main_args=()
main_env=()
# shellcheck disable=SC1091
. "$work/manifest.sh"

docker network create --label routemq-k8s-sim --subnet "$prefix.0/24" "$net" >/dev/null

# pod N: the init container, then the main container, like the kubelet does.
pod() {
    local n=$1 name="routemq-$1" env=() e
    for e in "${main_env[@]}"; do env+=(-e "${e//\$(POD_NAME)/$name}"); done
    docker volume create --label routemq-k8s-sim "sim-data-$n" >/dev/null
    docker volume create --label routemq-k8s-sim "sim-run-$n" >/dev/null
    docker run --rm --label routemq-k8s-sim --name "$name-init" --network "$net" \
        --network-alias "$name.routemq-headless" -e "POD_NAME=$name" \
        -v "$work/routemq-config/routemq.toml:/etc/routemq/routemq.toml:ro" \
        -v "sim-run-$n:/run/routemq" -v "sim-data-$n:/data" --read-only \
        --entrypoint "${init_command[0]}" "$image" "${init_command[@]:1}" | sed "s/^/    $name init: /"
    docker run -d --label routemq-k8s-sim --name "$name" --hostname "$name" --network "$net" \
        --ip "$prefix.$((10 + n))" --network-alias "$name.routemq-headless" \
        -e "POD_NAME=$name" "${env[@]}" \
        -v "sim-run-$n:/run/routemq:ro" -v "sim-data-$n:/data" \
        -v "$work/routemq-routes:/etc/routemq/routes:ro" --read-only --tmpfs /tmp \
        "$image" "${main_args[@]}" >/dev/null
}
ctl() { timeout 30 docker exec "$1" routemq-ctl --timeout 10s "${@:2}"; }
# "cluster_id raft_id_of_each_member..." as one line, from routemq-N's linearizable status.
cluster_line() {
    ctl "$1" --json status | "$py" -c '
import json, sys
d = json.load(sys.stdin)
ms = sorted(d["members"], key=lambda m: m["node_id"])
ok = all(m["state"] == "active" and m["liveness"] == "alive" for m in ms)
print(d["cluster_id"], len(ms) if ok else -1, " ".join(m["node_id"] + "=" + m["raft_id"] for m in ms))'
}
wait_formed() { # wait_formed VIA N TIMEOUT: N members, all active and alive
    local t0
    t0=$(date +%s)
    until [ "$(cluster_line "$1" 2>/dev/null | awk '{ print $2 }')" = "$2" ]; do
        [ $(( $(date +%s) - t0 )) -lt "$3" ] || die "no cluster of $2 active members after $3 s"
        sleep 1
    done
}

say "1. first install: routemq-0, -1, -2 in parallel"
pod 0 & p0=$!
pod 1 & p1=$!
pod 2 & p2=$!
wait "$p0" "$p1" "$p2"
wait_formed routemq-1 3 120
first=$(cluster_line routemq-1)
for n in 0 2; do
    [ "$(cluster_line "routemq-$n")" = "$first" ] || die "routemq-$n sees another cluster: $(cluster_line "routemq-$n")"
done
# (grep reads whole logs: `docker logs | grep -q` could fail under pipefail when grep exits early.)
[ "$(docker logs routemq-0 2>&1 | grep -c 'cluster bootstrapped')" -ge 1 ] || die "routemq-0 did not bootstrap"
for n in 1 2; do
    [ "$(docker logs "routemq-$n" 2>&1 | grep -c 'bootstrapping a new cluster')" = 0 ] || die "routemq-$n bootstrapped"
done
pass "first install: one cluster of 3, bootstrapped by routemq-0 only ($first)"
cluster_id=${first%% *}

say "2. routemq-0 loses its volume"
docker rm -f routemq-0 >/dev/null
docker volume rm sim-data-0 sim-run-0 >/dev/null
pod 0
wait_formed routemq-1 3 120
line=$(cluster_line routemq-0)
[ "${line%% *}" = "$cluster_id" ] || die "routemq-0 is in cluster ${line%% *}, not $cluster_id"
pass "routemq-0 with an empty volume joined the existing cluster $cluster_id"

say "3. rolling restart: routemq-2, -1, -0 re-created one at a time, each ready before the next"
before=$(cluster_line routemq-1)
for n in 2 1 0; do
    docker rm -f "routemq-$n" >/dev/null
    pod "$n"
    t0=$(date +%s)
    until docker exec "routemq-$n" routemq-probe /ready >/dev/null 2>&1; do
        [ $(( $(date +%s) - t0 )) -lt 60 ] || die "routemq-$n not ready 60 s after its restart"
        sleep 1
    done
    wait_formed "routemq-$n" 3 60
done
after=$(cluster_line routemq-0)
[ "$after" = "$before" ] || die "the cluster changed across the rolling restart: '$before' -> '$after'"
pass "rolling restart: same cluster, same raft ids ($after)"
