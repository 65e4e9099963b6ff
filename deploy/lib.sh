# shellcheck shell=bash
# Helpers shared by the scripts in deploy/. Source it (bash); it only defines functions.

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is needed but not installed${2:+ ($2)}"; }

# The Compose tool: `docker compose` (v2 plugin) or `docker-compose` (v1). Sets the array COMPOSE.
# shellcheck disable=SC2034 # COMPOSE is for the scripts that source this file
find_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' is installed (e.g. 'apt-get install docker-compose')"
    fi
}
