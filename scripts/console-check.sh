#!/usr/bin/env bash
# The web console in a real browser: headless Chromium (Debian's chromium + chromium-driver)
# driven by Selenium against a 3-node cluster that grows to 4 (tests/console/console_check.py).
#
#   ./scripts/console-check.sh        build if needed, install what is missing, run; exit 1 on a failure
#
# Selenium goes into a virtualenv under ~/.cache/routemq (ROUTEMQ_CONSOLE_VENV to move it).
# Screenshots: $CARGO_TARGET_DIR/console-artifacts/. Bounded: every wait has a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_build_deps
command -v chromium >/dev/null 2>&1 || apt_install chromium
command -v chromedriver >/dev/null 2>&1 || apt_install chromium-driver
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
venv="${ROUTEMQ_CONSOLE_VENV:-$HOME/.cache/routemq/console-venv}"
if ! "$venv/bin/python" -c 'import selenium' >/dev/null 2>&1; then
    say "installing Selenium into $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
    "$venv/bin/pip" install -q 'selenium==4.27.1' || die "pip install selenium failed"
fi
use_clippy_in_build
build_all
export ROUTEMQ_BIN_DIR
say "console check (headless Chromium)"
timeout 300 "$venv/bin/python" tests/console/console_check.py
