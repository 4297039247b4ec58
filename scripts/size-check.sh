#!/usr/bin/env bash
# Fails when a shipped binary, with its debug info stripped as the image does
# (deploy/docker/Dockerfile: objcopy --strip-debug, symbols kept), grows past its budget.
# Checks the dev-profile build the tests use: its dependencies, RocksDB's C++ included, are
# built optimised as in release, so its stripped size tracks the image's within a few MB and
# a new heavy dependency shows here first. Budgets in MiB.
set -euo pipefail
source "$(dirname "$0")/common.sh"

declare -A budget=([shuffle-master]=40 [shuffle-worker]=40 [shoal]=24)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0
for bin in "${!budget[@]}"; do
  src="$CARGO_TARGET_DIR/debug/$bin"
  [ -f "$src" ] || { echo "size-check: $src is missing: build the workspace first" >&2; exit 1; }
  objcopy --strip-debug "$src" "$tmp/$bin"
  mib=$(( $(stat -c %s "$tmp/$bin") / 1048576 ))
  if [ "$mib" -gt "${budget[$bin]}" ]; then
    echo "size-check: $bin is $mib MiB stripped, over its ${budget[$bin]} MiB budget" >&2
    failed=1
  else
    echo "size-check: $bin $mib MiB stripped (budget ${budget[$bin]} MiB)"
  fi
done
exit "$failed"
