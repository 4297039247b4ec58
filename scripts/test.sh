#!/usr/bin/env bash
# Builds Shoal once (one profile for tests, binaries and end-to-end suites) and runs every test.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$SHOAL_ROOT"

step "setup"; "$SHOAL_ROOT/scripts/setup.sh"; step_done "setup"
step "build"; cargo build --workspace --all-targets --locked; step_done "build"
# --all-targets also runs each criterion bench once, as a test; doc tests need their own pass.
step "test"; cargo test --workspace --all-targets --locked; cargo test --workspace --doc --locked; step_done "test"
