#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR/..
# Builds the RouteMQ container image, and a Mosquitto image for docker-compose, WITHOUT pulling
# anything: both are `FROM scratch` images filled from this machine's own files.
#
#   deploy/build-local-image.sh                     binaries from $CARGO_TARGET_DIR (newest of release/debug)
#   deploy/build-local-image.sh --profile release   binaries from $CARGO_TARGET_DIR/release
#   deploy/build-local-image.sh --bin-dir DIR       binaries from DIR (routemq and routemq-ctl)
#   deploy/build-local-image.sh --build             run `cargo build` first (debug unless --profile release)
#   deploy/build-local-image.sh --skip-mosquitto    only the RouteMQ image
#   deploy/build-local-image.sh --tag T --mosquitto-tag M
#
# routemq:local (--tag) holds what deploy/Dockerfile's runtime stage holds:
#   /usr/local/bin/routemq (entrypoint), routemq-ctl, routemq-probe (the healthcheck: GET /ready),
#   the shared libraries `ldd` lists for them (glibc, libstdc++, libgcc_s, libm) and the dynamic
#   loader, /etc/passwd and /etc/group with the non-root user routemq (uid/gid 10001), /data
#   owned by it (a VOLUME), /tmp, and the same ENV, ports, HEALTHCHECK and labels.
# routemq-mosquitto:local (--mosquitto-tag) holds the host's mosquitto, mosquitto_sub and
#   mosquitto_pub with their libraries, deploy/mosquitto/mosquitto.conf (anonymous on 1883),
#   the user mosquitto (uid/gid 1883, as in eclipse-mosquitto) and /mosquitto/data.
#
# Binaries are stripped of debug info (symbols stay, so backtraces keep function names). The
# host must be glibc-based (Debian, Ubuntu, ...) with docker and, for --build or a missing
# probe, cargo. A fresh clone works: missing binaries are built with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

tag=routemq:local
mosquitto_tag=routemq-mosquitto:local
bin_dir="${ROUTEMQ_BIN_DIR:-}"
profile=""
do_build=0
skip_mosquitto=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --mosquitto-tag) mosquitto_tag=${2:?--mosquitto-tag needs a value}; shift 2 ;;
        --bin-dir) bin_dir=${2:?--bin-dir needs a value}; shift 2 ;;
        --profile) profile=${2:?--profile needs debug or release}; shift 2 ;;
        --build) do_build=1; shift ;;
        --skip-mosquitto) skip_mosquitto=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$profile" in ""|debug|release) ;; *) die "--profile must be debug or release, not $profile" ;; esac

need docker
need ldd
need strip
need tar
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is it running, and may this user use it?)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/routemq/target}"

cargo_build_node() {
    local p=${profile:-debug}
    need cargo
    local flags=(--locked -p routemq-node -p routemq-client --bins)
    [ "$p" = release ] && flags+=(--release)
    # scripts/lib/common.sh installs libclang-dev (RocksDB's bindings) when it can.
    bash -c '. scripts/lib/common.sh && ensure_build_deps'
    say "cargo build ${flags[*]} (target dir $CARGO_TARGET_DIR; the first build takes 10-15 min)"
    cargo build "${flags[@]}"
    bin_dir="$CARGO_TARGET_DIR/$p"
}

if [ "$do_build" = 1 ]; then
    cargo_build_node
elif [ -z "$bin_dir" ]; then
    if [ -n "$profile" ]; then
        bin_dir="$CARGO_TARGET_DIR/$profile"
    else
        # The newer of the two profiles' binaries.
        bin_dir="$CARGO_TARGET_DIR/debug"
        if [ -x "$CARGO_TARGET_DIR/release/routemq" ] &&
            { [ ! -x "$bin_dir/routemq" ] || [ "$CARGO_TARGET_DIR/release/routemq" -nt "$bin_dir/routemq" ]; }; then
            bin_dir="$CARGO_TARGET_DIR/release"
        fi
    fi
    if [ ! -x "$bin_dir/routemq" ] || [ ! -x "$bin_dir/routemq-ctl" ]; then
        say "no routemq binaries in $bin_dir: building them"
        profile=$(basename "$bin_dir")
        case "$profile" in debug|release) ;; *) profile=debug ;; esac
        cargo_build_node
    fi
fi
for b in routemq routemq-ctl; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found (build it, or give --bin-dir/--build)"
done

# The healthcheck probe: a small dependency-free crate of its own, linked statically.
probe_target="${ROUTEMQ_DEPLOY_TARGET_DIR:-$HOME/.cache/routemq/target-deploy}"
probe_triple="$(uname -m)-unknown-linux-gnu"
probe_bin="$probe_target/$probe_triple/release/routemq-probe"
need cargo
say "building routemq-probe (deploy/probe, static, target dir $probe_target)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$probe_target" \
    cargo build --quiet --locked --release --target "$probe_triple" --manifest-path deploy/probe/Cargo.toml
[ -x "$probe_bin" ] || die "routemq-probe was not built at $probe_bin"

stage=$(mktemp -d "${TMPDIR:-/tmp}/routemq-image.XXXXXX")
cleanup() { rm -rf "$stage"; }
trap cleanup EXIT

# Copies each executable to DEST/<its path in the image> and every library `ldd` lists for it
# (and the dynamic loader) to the same path under ROOT.
copy_libs() {
    local root=$1 exe=$2 lib
    # "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    while read -r lib; do
        [ -n "$lib" ] || continue
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(ldd "$exe" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

# The passwd/group/nsswitch files of a scratch image.
write_etc() {
    local root=$1 user=$2 id=$3 home=$4
    mkdir -p "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:%s:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
        "$user" "$id" "$id" "$user" "$home" >"$root/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\nnogroup:x:65534:\n' "$user" "$id" >"$root/etc/group"
    # glibc >= 2.34 has files and dns built in; Docker provides /etc/hosts and /etc/resolv.conf.
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# docker build of ROOT (tarred with numeric owners, so /data keeps its owner) with a Dockerfile body.
build_image() {
    local dir=$1 image=$2 body=$3 previous
    tar --numeric-owner -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
    printf 'FROM scratch\nADD rootfs.tar /\n%s\n' "$body" >"$dir/Dockerfile"
    say "docker build -t $image ($(du -sh "$dir/rootfs.tar" | cut -f1) of files)"
    previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
    # The legacy builder prints a deprecation notice on stderr: show stderr only on failure.
    if ! docker build --quiet -t "$image" "$dir" >"$dir/build.log" 2>&1; then
        cat "$dir/build.log" >&2
        die "docker build of $image failed"
    fi
    # The image this tag named before, now untagged: drop it unless a container still uses it.
    if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
        docker rmi "$previous" >/dev/null 2>&1 || true
    fi
}

# ---- RouteMQ ----------------------------------------------------------------------------
uid=10001
version=$("$bin_dir/routemq" --version | awk '{ print $2 }')
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
say "RouteMQ image $tag: routemq $version from $bin_dir (git $revision)"
r="$stage/routemq"
mkdir -p "$r/rootfs/usr/local/bin" "$r/rootfs/data" "$r/rootfs/etc/routemq" "$r/rootfs/run/routemq"
for b in routemq routemq-ctl; do
    cp "$bin_dir/$b" "$r/rootfs/usr/local/bin/$b"
    strip --strip-debug "$r/rootfs/usr/local/bin/$b"
    copy_libs "$r/rootfs" "$bin_dir/$b"
done
cp "$probe_bin" "$r/rootfs/usr/local/bin/routemq-probe"
write_etc "$r/rootfs" routemq "$uid" /data
# /run/routemq: where the Kubernetes init container writes the node's config file.
chown "$uid:$uid" "$r/rootfs/data" "$r/rootfs/run/routemq"
chmod 0750 "$r/rootfs/data" "$r/rootfs/run/routemq"
# Keep in step with the runtime stage of deploy/Dockerfile.
build_image "$r" "$tag" "$(cat <<EOF
ENV PATH=/usr/local/bin:/usr/bin:/bin \\
    ROUTEMQ_GRPC=0.0.0.0:7001 \\
    ROUTEMQ_GOSSIP=0.0.0.0:7101 \\
    ROUTEMQ_HTTP=0.0.0.0:7201 \\
    ROUTEMQ_DATA_DIR=/data
USER $uid:$uid
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7001/tcp 7101/udp 7201/tcp
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["/usr/local/bin/routemq-probe", "/ready"]
LABEL org.opencontainers.image.title="RouteMQ" \\
      org.opencontainers.image.description="Clustered MQTT message router (library-bundled scratch image)" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$revision" \\
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/routemq"]
CMD ["start"]
EOF
)"
docker run --rm --entrypoint /usr/local/bin/routemq-ctl "$tag" --version >/dev/null ||
    die "the image $tag does not run routemq-ctl (a missing library?)"
say "built $tag: $(docker run --rm "$tag" --version), $(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

# ---- Mosquitto --------------------------------------------------------------------------
if [ "$skip_mosquitto" = 0 ]; then
    mosquitto_bin=$(command -v mosquitto || true)
    [ -n "$mosquitto_bin" ] || mosquitto_bin=/usr/sbin/mosquitto
    if [ ! -x "$mosquitto_bin" ] || ! command -v mosquitto_sub >/dev/null || ! command -v mosquitto_pub >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "installing mosquitto and mosquitto-clients with apt-get"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
            mosquitto_bin=/usr/sbin/mosquitto
        else
            die "mosquitto and mosquitto-clients are needed (e.g. 'sudo apt-get install mosquitto mosquitto-clients')"
        fi
    fi
    m="$stage/mosquitto"
    mkdir -p "$m/rootfs/usr/sbin" "$m/rootfs/usr/bin" "$m/rootfs/mosquitto/config" "$m/rootfs/mosquitto/data" "$m/rootfs/mosquitto/log"
    cp "$mosquitto_bin" "$m/rootfs/usr/sbin/mosquitto"
    copy_libs "$m/rootfs" "$mosquitto_bin"
    for b in mosquitto_sub mosquitto_pub; do
        cp "$(command -v "$b")" "$m/rootfs/usr/bin/$b"
        copy_libs "$m/rootfs" "$(command -v "$b")"
    done
    cp deploy/mosquitto/mosquitto.conf "$m/rootfs/mosquitto/config/mosquitto.conf"
    write_etc "$m/rootfs" mosquitto 1883 /mosquitto
    chown -R 1883:1883 "$m/rootfs/mosquitto/data" "$m/rootfs/mosquitto/log"
    mosquitto_version=$("$mosquitto_bin" -h 2>/dev/null | awk 'NR == 1 { print $3 }' || true)
    say "Mosquitto image $mosquitto_tag: mosquitto ${mosquitto_version:-?} from $mosquitto_bin"
    build_image "$m" "$mosquitto_tag" "$(cat <<'EOF'
ENV PATH=/usr/sbin:/usr/bin:/bin
USER 1883:1883
VOLUME ["/mosquitto/data"]
EXPOSE 1883
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["mosquitto_sub", "-h", "127.0.0.1", "-p", "1883", "-t", "$SYS/broker/version", "-C", "1", "-W", "3"]
ENTRYPOINT ["/usr/sbin/mosquitto"]
CMD ["-c", "/mosquitto/config/mosquitto.conf"]
EOF
)"
    docker run --rm --entrypoint /usr/bin/mosquitto_sub "$mosquitto_tag" --help >/dev/null 2>&1 ||
        [ $? -eq 1 ] || die "the image $mosquitto_tag does not run mosquitto_sub (a missing library?)"
    say "built $mosquitto_tag"
fi
