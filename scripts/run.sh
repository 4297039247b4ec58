#!/usr/bin/env bash
# Builds Shoal and runs the local demo: a master and two workers on loopback, a shuffle pushed
# through them, sealed, spilled to a local-directory object store and read back both ways.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$SHOAL_ROOT"

step "setup"; "$SHOAL_ROOT/scripts/setup.sh"; step_done "setup"
step "build"; cargo build --workspace --locked; step_done "build"
cargo run --quiet --locked -p shoal-tests --example local_demo
