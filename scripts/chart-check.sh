#!/usr/bin/env bash
# Checks the Helm chart (render, lint, strict Kubernetes schemas, refused bad values), the
# Grafana dashboard's metric names and the Dockerfile against the Rust sources. Needs no
# cluster, no helm binary and, after the first run, no network.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$SHOAL_ROOT"

venv="$SHOAL_CACHE/venv-chart"
requirements="$SHOAL_ROOT/tests/chart/requirements.txt"
stamp="$venv/.requirements"
# Reinstall only when the pinned requirements change.
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
  step "chart venv"
  # tomllib (reading the rendered TOML) is in the standard library from 3.11 on.
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "chart-check: needs Python 3.11 or newer as python3" >&2; exit 1; }
  python3 -m venv "$venv" || { echo "chart-check: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
  step_done "chart venv"
fi

step "chart check"
"$venv/bin/python" tests/chart/check_chart.py
step_done "chart check"
