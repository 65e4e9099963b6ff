#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR/..
# Validates every manifest in deploy/k8s offline: Kubernetes JSON schemas (strict, for 1.30 and
# the newest bundled), the ServiceMonitor against the prometheus-operator CRD models, the
# files' consistency with each other, and negative controls (see validate.py).
#
#   deploy/k8s/validate.sh
#
# The validators come from PyPI, pinned, into a virtualenv under ~/.cache/routemq (override
# with ROUTEMQ_K8S_VENV); installed on first use, reused afterwards. Needs python3 (>= 3.11)
# with venv. Exits non-zero on any error; ends with "N passed, N failed".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/../lib.sh"

venv="${ROUTEMQ_K8S_VENV:-$HOME/.cache/routemq/k8s-validate-venv}"
requirements=(
    "kubernetes-validate==1.37.0"
    "cloudcoil.models.prometheus_operator==0.80.1.0"
)

need python3
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 is needed (tomllib)"
if [ ! -x "$venv/bin/python" ]; then
    say "creating the validator virtualenv $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
installed=$("$venv/bin/python" -m pip freeze 2>/dev/null || true)
if ! grep -qix "kubernetes-validate==1.37.0" <<<"$installed" ||
    ! "$venv/bin/python" -c 'import cloudcoil.models.prometheus_operator' 2>/dev/null; then
    say "installing ${requirements[*]} (PyPI)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}" ||
        die "pip install failed: is PyPI reachable?"
fi
"$venv/bin/python" "$here/validate.py"
