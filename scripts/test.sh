#!/usr/bin/env bash
# Builds Shoal once (one profile for tests, binaries and end-to-end suites) and runs every test.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$SHOAL_ROOT"

step "setup"; "$SHOAL_ROOT/scripts/setup.sh"; step_done "setup"
step "build"; cargo build --workspace --all-targets --locked; step_done "build"
# Shipped binaries stay small (the image strips them the same way).
"$SHOAL_ROOT/scripts/size-check.sh"
# The Spark plugin jar (native library included; shims for Spark 3.5 and 4.x) and its checks
# for each Spark line, used by tests/tests/spark.rs.
step "spark plugin"; "$SHOAL_ROOT/shuffle-client/spark/build.sh"; step_done "spark plugin"
# The Helm chart: render, lint and validate against Kubernetes schemas; bad values refused.
"$SHOAL_ROOT/scripts/chart-check.sh"
# --all-targets also runs each criterion bench once, as a test; doc tests need their own pass.
step "test"; cargo test --workspace --all-targets --locked; cargo test --workspace --doc --locked; step_done "test"
