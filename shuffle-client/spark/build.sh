#!/usr/bin/env bash
# Builds the Shoal Spark plugin: the native client (the JNI cdylib), the Java classes compiled
# against the Spark jars of the pyspark package, and one jar holding both. Also compiles the
# integration checks into a second jar. Prints the plugin jar's absolute path as its last line.
#
# SPARK_HOME, when set, names the Spark to compile against; else the pyspark of Shoal's venv.
# SHOAL_PROFILE=release builds an optimised native library (default: the dev profile, which
# shares its build with the tests).
set -euo pipefail
source "$(cd "$(dirname "$0")/../.." && pwd)/scripts/common.sh"
here="$SHOAL_ROOT/shuffle-client/spark"
out="$SHOAL_CACHE/spark"

if [ -z "${SPARK_HOME:-}" ]; then
  SPARK_HOME="$("$SHOAL_CACHE/venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null)" \
    || { echo "no SPARK_HOME and no pyspark in $SHOAL_CACHE/venv: run scripts/setup.sh" >&2; exit 1; }
fi
[ -d "$SPARK_HOME/jars" ] || { echo "$SPARK_HOME/jars does not exist" >&2; exit 1; }

profile="${SHOAL_PROFILE:-dev}"
cargo rustc --quiet --locked --profile "$profile" -p shuffle-client --lib --features jni --crate-type cdylib >&2
[ "$profile" = dev ] && dir=debug || dir="$profile"
lib="$CARGO_TARGET_DIR/$dir/libshuffle_client.so"
[ -f "$lib" ] || { echo "the native library was not built at $lib" >&2; exit 1; }

rm -rf "$out/classes" "$out/test-classes"
mkdir -p "$out/classes/io/shoal/spark/native/linux-x86_64" "$out/test-classes"
javac --release 17 -nowarn -Xlint:none -cp "$SPARK_HOME/jars/*" -d "$out/classes" \
  $(find "$here/src/main/java" -name '*.java') >&2
cp "$lib" "$out/classes/io/shoal/spark/native/linux-x86_64/libshuffle_client.so"
jar cf "$out/shoal-spark.jar" -C "$out/classes" .

if [ -d "$here/src/test/java" ]; then
  javac --release 17 -nowarn -Xlint:none -cp "$SPARK_HOME/jars/*:$out/classes" -d "$out/test-classes" \
    $(find "$here/src/test/java" -name '*.java') >&2
  jar cf "$out/shoal-spark-tests.jar" -C "$out/test-classes" .
fi

echo "$out/shoal-spark.jar"
