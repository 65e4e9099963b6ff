# Shared by the scripts in scripts/: dependency checks and the cargo target directory.
# Source it; it defines functions and exports CARGO_TARGET_DIR.

# Builds persist outside the clone, so a fresh checkout (and CI) reuses compiled RocksDB.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/routemq/target}"
ROUTEMQ_BIN_DIR="$CARGO_TARGET_DIR/debug"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_install() {
    # Installs Debian packages when we can (root + apt-get); otherwise says what to install.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        if [ "$apt_updated" = 0 ]; then
            say "apt-get update"
            apt-get update -qq >/dev/null || die "apt-get update failed"
            apt_updated=1
        fi
        say "installing $*"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
    else
        die "missing system packages: $* (install them, e.g. 'sudo apt-get install $*', and run again)"
    fi
}

# RocksDB's bindings need libclang at build time; the protobuf compiler is vendored.
ensure_build_deps() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
    # libclang.so itself (bindgen's), not libclang-cpp.so, which other packages pull in.
    if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
        && ! ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'; then
        apt_install libclang-dev
    fi
    command -v c++ >/dev/null 2>&1 || apt_install g++
}

# Tests need a real MQTT broker (Mosquitto) and the fault tests iproute2/iptables.
ensure_test_deps() {
    ensure_build_deps
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
    command -v ip >/dev/null 2>&1 || apt_install iproute2
    command -v curl >/dev/null 2>&1 || apt_install curl
}

# Clippy's lints (warnings are errors) inside the one build: clippy-driver wraps rustc for the
# workspace crates only, so dependencies are compiled once, shared with every other build.
# (`cargo clippy` checks in a separate mode whose build-script runs differ: it would compile
# RocksDB's C++ a second time, ~25 min on 2 cores.)
use_clippy_in_build() {
    local driver
    driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)" \
        || die "clippy-driver not found: install it with 'rustup component add clippy'"
    export RUSTC_WORKSPACE_WRAPPER="$driver"
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
}

# One build for everything: binaries, tests and benches share one feature set, so the quick
# start, the tests and clippy never compile RocksDB twice.
build_all() {
    say "cargo build --workspace --all-targets (first build compiles RocksDB: ~25-30 min on 2 cores)"
    cargo build --locked --workspace --all-targets
}
