#!/usr/bin/env bash
# Spark jobs under Spark's own sort shuffle and through Shoal, alternately, in one run:
#   bench/spark/run.sh [ROWS] [ROUNDS] [JOBS]
# Builds the release binaries and plugin, starts a local cluster (one master, one worker, the
# local-directory object store), runs bench/spark/jobs_bench.py against it (local-cluster
# [2,1,2048]) and prints medians and ratios. Defaults: 15150000 rows (about 2 GB shuffled), 3
# rounds, jobs repartition,sort,sql.
# At the end it prints the CPU seconds the Shoal worker and master processes used over the run
# (they are idle during the sort-shuffle runs): the CPU a shuffled byte costs on the Shoal side.
# SHOAL_PERF=FILE also records the worker with perf (a flat profile: `perf report -i FILE
# --no-children --sort dso,sym`). SHOAL_BENCH_ONLY=shoal (or sort) runs one side only, e.g. to
# profile the whole machine (`perf record -a`) while Shoal runs.
set -euo pipefail
source "$(dirname "$0")/../../scripts/common.sh"
cd "$SHOAL_ROOT"

"$SHOAL_ROOT/scripts/setup.sh" >&2
cargo build --release --locked -p shuffle-master -p shuffle-worker -p shuffle-client --bins >&2
jar="$(SHOAL_PROFILE=release "$SHOAL_ROOT/shuffle-client/spark/build.sh" | tail -n 1)"

work="$(mktemp -d)"
"$CARGO_TARGET_DIR/release/shoal" local up --masters 1 --workers 1 --data-dir "$work/.shoal" > "$work/cluster.out" 2>&1 &
cluster=$!
perf_pid=""
# utime + stime of a process, in seconds.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo "?"; }
stop() {
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; fi
  for p in $(pgrep -f "$CARGO_TARGET_DIR/release/shuffle-(worker|master)" || true); do
    echo "cpu $(tr '\0' ' ' < "/proc/$p/cmdline" | awk '{ n = split($1, a, "/"); print a[n] }') pid $p: $(cpu_s "$p") s" >&2
  done
  kill -TERM "$cluster" 2>/dev/null || true
  wait "$cluster" 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
for _ in $(seq 1 300); do
  [ -f "$work/.shoal/cluster.json" ] && break
  kill -0 "$cluster" 2>/dev/null || { cat "$work/cluster.out" >&2; echo "the cluster did not start" >&2; exit 1; }
  sleep 0.2
done
[ -f "$work/.shoal/cluster.json" ] || { cat "$work/cluster.out" >&2; echo "the cluster did not start in 60 s" >&2; exit 1; }

if [ -n "${SHOAL_PERF:-}" ]; then
  workers="$(pgrep -d, -f "$CARGO_TARGET_DIR/release/shuffle-worker")"
  perf record -F 499 -p "$workers" -o "$SHOAL_PERF" >/dev/null 2>&1 &
  perf_pid=$!
fi

SPARK_HOME="$("$SHOAL_CACHE/venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
  "$SHOAL_CACHE/venv/bin/python" "$SHOAL_ROOT/bench/spark/jobs_bench.py" "$work/.shoal/cluster.json" "$jar" "$@"
