#!/usr/bin/env bash
# The main job: builds Shoal and its Spark plugin, starts a local cluster (one master, two
# workers, a local-directory object store), runs a Spark job through it in local-cluster mode
# (executors in their own JVMs), prints the result and the bytes shuffled, and stops the cluster.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$SHOAL_ROOT"

step "setup"; "$SHOAL_ROOT/scripts/setup.sh"; step_done "setup"
# The same build as scripts/test.sh (same packages, targets and features), so whichever of the
# two runs first, the other reuses it instead of compiling RocksDB's C++ a second time.
step "build"; cargo build --workspace --all-targets --locked; step_done "build"
step "spark plugin"; jar="$("$SHOAL_ROOT/shuffle-client/spark/build.sh" | tail -n 1)"; step_done "spark plugin"

work="$(mktemp -d)"
"$CARGO_TARGET_DIR/debug/shoal" local up --masters 1 --workers 2 --data-dir "$work/.shoal" > "$work/cluster.out" 2>&1 &
cluster=$!
stop() {
  kill -TERM "$cluster" 2>/dev/null || true
  wait "$cluster" 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
for _ in $(seq 1 300); do
  [ -f "$work/.shoal/cluster.json" ] && break
  kill -0 "$cluster" 2>/dev/null || { cat "$work/cluster.out"; echo "the cluster did not start" >&2; exit 1; }
  sleep 0.2
done
[ -f "$work/.shoal/cluster.json" ] || { cat "$work/cluster.out"; echo "the cluster did not start in 60 s" >&2; exit 1; }
cat "$work/cluster.out"

step "spark job"
SPARK_HOME="$("$SHOAL_CACHE/venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
  "$SHOAL_CACHE/venv/bin/python" "$SHOAL_ROOT/shuffle-client/spark/examples/demo.py" "$work/.shoal/cluster.json" "$jar" \
  2> "$work/spark.log" || { tail -n 40 "$work/spark.log"; exit 1; }
step_done "spark job"
"$CARGO_TARGET_DIR/debug/shoal" status --masters "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["master_endpoints"])' "$work/.shoal/cluster.json")" \
  --tls-ca "$work/.shoal/tls/ca.pem" --credential-file "$work/.shoal/auth/admin.credential"
