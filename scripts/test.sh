#!/usr/bin/env bash
# Builds Shoal once (one profile for tests, binaries and end-to-end suites) and runs every test.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$SHOAL_ROOT"

step "setup"; "$SHOAL_ROOT/scripts/setup.sh"; step_done "setup"
step "build"; cargo build --workspace --all-targets --locked; step_done "build"
step "test"; cargo test --workspace --locked; step_done "test"
