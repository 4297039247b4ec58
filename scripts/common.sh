# Shared settings for Shoal's scripts. Sourced, not run.
# Everything slow to make (the Cargo build, tools, Python venv) lives under $SHOAL_CACHE, outside
# the clone, so a fresh clone on the same machine reuses it.
SHOAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SHOAL_ROOT
export SHOAL_CACHE="${SHOAL_CACHE:-$HOME/.cache/shoal}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SHOAL_CACHE/target}"
export SHOAL_BIN_DIR="$SHOAL_CACHE/bin"
export PATH="$SHOAL_BIN_DIR:$HOME/.cargo/bin:$PATH"
# Keep the C++ build of RocksDB to the cores we have.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-$(nproc)}"

_step_start=0
step() {
  _step_start=$(date +%s)
  echo "==> $*"
}
step_done() {
  local took=$(( $(date +%s) - _step_start ))
  echo "<== $* (${took}s)"
  echo "$* ${took}s" >> "${SHOAL_TIMINGS:-/dev/null}"
}
