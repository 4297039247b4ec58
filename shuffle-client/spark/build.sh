#!/usr/bin/env bash
# Builds the Shoal Spark plugin: the native client (the JNI cdylib), the Java classes, and one jar
# holding both that runs on Spark 3.5 (Scala 2.12) and 4.0 to 4.3 (Scala 2.13). The shared classes
# (src/main/java) are compiled once, against Spark 4.3; each Spark line's shim (src/spark35,
# src/spark4: the calls whose binary signatures differ) against that line's own jars. Also
# compiles the integration checks, once per line (they call Scala collections directly), into
# shoal-spark-tests.jar (4.3) and shoal-spark-tests-spark35.jar. Prints the plugin jar's absolute
# path as its last line.
#
# SPARK_HOME, when set, names the Spark 4.3 to compile against, SPARK35_HOME the Spark 3.5; else
# the pyspark packages of Shoal's venvs (scripts/setup.sh installs both).
# SHOAL_PROFILE=release builds an optimised native library (default: the dev profile, which
# shares its build with the tests).
set -euo pipefail
source "$(cd "$(dirname "$0")/../.." && pwd)/scripts/common.sh"
here="$SHOAL_ROOT/shuffle-client/spark"
out="$SHOAL_CACHE/spark"

# The Spark of a venv in the cache (its pyspark package), unless the named variable is set.
spark_of() {
  local var="$1" venv="$2" home
  home="${!var:-}"
  if [ -z "$home" ]; then
    home="$("$SHOAL_CACHE/$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null)" \
      || { echo "no $var and no pyspark in $SHOAL_CACHE/$venv: run scripts/setup.sh" >&2; return 1; }
  fi
  [ -d "$home/jars" ] || { echo "$home/jars does not exist ($var)" >&2; return 1; }
  echo "$home"
}
spark4="$(spark_of SPARK_HOME venv)"
spark35="$(spark_of SPARK35_HOME venv-spark35)"
ls "$spark4"/jars/spark-core_2.13-4.3.*.jar >/dev/null 2>&1 \
  || { echo "$spark4 is not Spark 4.3 (Scala 2.13), which the shared classes compile against" >&2; exit 1; }
ls "$spark35"/jars/spark-core_2.12-3.5.*.jar >/dev/null 2>&1 \
  || { echo "$spark35 is not Spark 3.5 (Scala 2.12)" >&2; exit 1; }

profile="${SHOAL_PROFILE:-dev}"
cargo rustc --quiet --locked --profile "$profile" -p shuffle-client --lib --features jni --crate-type cdylib >&2
[ "$profile" = dev ] && dir=debug || dir="$profile"
lib="$CARGO_TARGET_DIR/$dir/libshuffle_client.so"
[ -f "$lib" ] || { echo "the native library was not built at $lib" >&2; exit 1; }

# Classes are compiled in a directory of this build's own, and each jar moved into place whole:
# builds from other clones share $out, and must not mix their classes into ours.
mkdir -p "$out"
work="$(mktemp -d "$out/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
classes="$work/classes"
mkdir -p "$classes/io/shoal/spark/native/linux-x86_64" "$work/tests" "$work/tests-spark35"
compile() { # classpath, output dir, source dir...
  local cp="$1" dir="$2"
  shift 2
  javac --release 17 -nowarn -Xlint:none -cp "$cp" -d "$dir" $(find "$@" -name '*.java') >&2
}
compile "$spark4/jars/*" "$classes" "$here/src/main/java"
compile "$spark35/jars/*:$classes" "$classes" "$here/src/spark35/java"
# After the 3.5 shim: the 4.0 shim borrows its MapStatus and ExternalSorter calls.
compile "$spark4/jars/*:$classes" "$classes" "$here/src/spark4/java"
cp "$lib" "$classes/io/shoal/spark/native/linux-x86_64/libshuffle_client.so"
jar cf "$work/shoal-spark.jar" -C "$classes" .

if [ -d "$here/src/test/java" ]; then
  compile "$spark4/jars/*:$classes" "$work/tests" "$here/src/test/java"
  jar cf "$work/shoal-spark-tests.jar" -C "$work/tests" .
  compile "$spark35/jars/*:$classes" "$work/tests-spark35" "$here/src/test/java"
  jar cf "$work/shoal-spark-tests-spark35.jar" -C "$work/tests-spark35" .
fi
for j in "$work"/*.jar; do
  mv -f "$j" "$out/"
done

echo "$out/shoal-spark.jar"
