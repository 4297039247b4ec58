#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Shoal. Idempotent and quiet when
# everything is present.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_apt=()
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v javac >/dev/null 2>&1 || need_apt+=(openjdk-17-jdk-headless)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi
mkdir -p "$SHOAL_BIN_DIR"

# A real S3-protocol server for the object-store tests, built once into the cache.
if [ ! -x "$SHOAL_BIN_DIR/s3s-fs" ]; then
  echo "installing s3s-fs (S3-protocol test server)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$SHOAL_CACHE" --quiet
fi

# Spark for the plugin: the pyspark package carries Spark's jars, bin/ scripts and Python API.
# One venv per Spark line the plugin supports and CI tests: 4.3 (Scala 2.13) in venv, 3.5
# (Scala 2.12) in venv-spark35. Both run on the Java 17 installed above.
install_pyspark() {
  local venv="$SHOAL_CACHE/$1" version="$2"
  if ! "$venv/bin/python" -c "import pyspark, sys; sys.exit(pyspark.__version__ != '$version')" >/dev/null 2>&1; then
    echo "installing pyspark $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "pyspark==$version"
  fi
}
install_pyspark venv 4.3.0
install_pyspark venv-spark35 3.5.9

# Python's `cryptography`, the strictest certificate parser at hand: proto/src/certs.rs checks
# that it (with OpenSSL and rustls) accepts the certificates `shoal certs` writes.
cryptography_version=48.0.0
if ! "$SHOAL_CACHE/venv/bin/python" -c "import cryptography, sys; sys.exit(cryptography.__version__ != '$cryptography_version')" >/dev/null 2>&1; then
  echo "installing cryptography $cryptography_version into $SHOAL_CACHE/venv"
  "$SHOAL_CACHE/venv/bin/pip" install --quiet --disable-pip-version-check "cryptography==$cryptography_version"
fi
