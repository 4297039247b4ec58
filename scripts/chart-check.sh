#!/usr/bin/env bash
# Checks the Helm chart (render, lint, strict Kubernetes schemas, refused bad values), the
# Grafana dashboard's metric names and the Dockerfile against the Rust sources. Needs no
# cluster, no helm binary and, after the first run, no network.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$SHOAL_ROOT"

venv="$SHOAL_CACHE/venv-chart"
# Pinned: helm-python-sdk bundles Helm's Go SDK (render, lint, values schema) as a library.
pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)
stamp="$venv/.pins"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
  step "chart venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" > "$stamp"
  step_done "chart venv"
fi

step "chart check"
"$venv/bin/python" tests/chart/check_chart.py
step_done "chart check"
