#!/usr/bin/env bash
# Set up a fresh machine for sutazai_hwopt: the Python package (compiled in place, editable) and, with --test,
# everything the test suite needs (test extras and the Debian packages its integration tests drive).
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1 ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
APT_PACKAGES=()
if [ "$want_tests" = 1 ]; then
  # Debian packages the integration tests drive (servers, a browser).
  # chromium: the dashboard's headless-browser test; redis-server: the cache's remote tier and the benchmarks.
  APT_PACKAGES+=(chromium chromium-driver redis-server)
fi
if [ ${#APT_PACKAGES[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

extras="server"
[ "$want_tests" = 1 ] && extras="server,redis,test"
# Editable install: pip builds the Cython cores in an isolated build environment and leaves the compiled
# modules in the source tree, so running from the checkout imports them.
"$PY" -m pip install -q --disable-pip-version-check -e ".[${extras}]"
