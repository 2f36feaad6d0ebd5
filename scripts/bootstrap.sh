#!/usr/bin/env bash
# Set up a fresh machine for sutazai_hwopt: the Python package (compiled in place, editable) and, with --test,
# everything the test suite needs (test extras and the Debian packages its integration tests drive).
# Safe to run again: every step is idempotent, and a rerun with nothing changed runs neither pip nor a compiler
# (a stamp in build/ and the compiled modules' timestamps say so).
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
mkdir -p build   # git-ignored: the stamps and the build log live here

# Which compiled cores are missing or older than their sources (the module's .pyx, or any shared .pxi/.pxd).
stale_cores() {
  local pyx name so
  for pyx in _native/*.pyx; do
    name=$(basename "$pyx" .pyx)
    so=$(ls sutazai_hwopt/_native/"$name".cpython-*.so 2>/dev/null | head -n 1 || true)
    if [ -z "$so" ] || [ -n "$(find _native -maxdepth 1 \( -name "$name.pyx" -o -name '*.pxi' -o -name '*.pxd' \) \
                              -newer "$so" -print -quit)" ]; then
      echo "$name"
    fi
  done
}

# Step 1, only when needed: the Python dependencies and the editable install. A stamp per set of extras records
# what was last installed (the packaging files and the interpreter); the check also confirms that this checkout
# is the one installed, from outside it and without PYTHONPATH. A --test install also serves a plain run.
fingerprint=$( { cat pyproject.toml setup.py; "$PY" -c 'import sys; print(sys.executable, sys.version)'; } \
               | sha256sum | cut -c1-16)
stamp="build/bootstrap.${extras//,/-}.stamp"
stamps=("$stamp")
[ "$want_tests" = 0 ] && stamps+=(build/bootstrap.server-redis-test.stamp)
installed_here() {
  local root=$PWD py
  py=$("$PY" -c 'import sys; print(sys.executable)')
  (cd / && env -u PYTHONPATH "$py" - "$root" <<'PYEOF'
import importlib.metadata, os, sys
import sutazai_hwopt
importlib.metadata.distribution("sutazai_hwopt")
here = os.path.realpath(os.path.join(sys.argv[1], "sutazai_hwopt"))
sys.exit(0 if os.path.realpath(os.path.dirname(sutazai_hwopt.__file__)) == here else 1)
PYEOF
  ) >/dev/null 2>&1
}
up_to_date=0
for s in "${stamps[@]}"; do
  if [ -f "$s" ] && [ "$(cat "$s")" = "$fingerprint" ]; then up_to_date=1; fi
done
[ "$up_to_date" = 1 ] && ! installed_here && up_to_date=0

stale=$(stale_cores | tr '\n' ' ')
can_build='import Cython, numpy, setuptools; assert int(setuptools.__version__.split(".")[0]) >= 77'
if [ "$up_to_date" = 1 ] && [ -n "$stale" ] && ! "$PY" -c "$can_build" >/dev/null 2>&1; then
  up_to_date=0   # a core must be rebuilt and this environment cannot build it in place: let pip do it
fi

log=build/bootstrap.log
if [ "$up_to_date" = 0 ]; then
  echo "bootstrap: installing sutazai_hwopt[${extras}] in editable mode with $("$PY" --version 2>&1) (log: $log)"
  [ -n "$stale" ] && echo "bootstrap: the Cython cores to compile: ${stale}(minutes on 2 cores)"
  # Editable install: pip builds the Cython cores in an isolated build environment and leaves the compiled
  # modules in the source tree, so running from the checkout imports them. -v streams the build's output into
  # the log; a line per package and per compiled core is shown.
  if ! "$PY" -m pip install -v --disable-pip-version-check -e ".[${extras}]" </dev/null 2>&1 | tee "$log" \
       | { grep --line-buffered -E "^Collecting |building '|^Successfully installed" || true; } \
       | sed -u -E -e "s/^Collecting /  package /" -e "s/^Successfully installed/  installed:/" \
                   -e "s/.*building 'sutazai_hwopt\._native\.([a-z_]+)' extension.*/  compiling core \1/"; then
    echo "bootstrap: pip failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  echo "$fingerprint" > "$stamp"
  stale=$(stale_cores | tr '\n' ' ')
else
  echo "bootstrap: sutazai_hwopt[${extras}] is installed from this checkout; dependencies unchanged (no pip run)"
fi

# Step 2: rebuild in place only the cores whose sources changed since they were compiled.
if [ -n "$stale" ]; then
  echo "bootstrap: rebuilding changed cores: ${stale}"
  if ! SUTAZAI_HWOPT_ONLY=$(echo $stale | tr ' ' ',') "$PY" setup.py build_ext --inplace -j "$(nproc)" </dev/null 2>&1 \
       | tee "$log" | { grep --line-buffered "building '" || true; } \
       | sed -u -E "s/.*building 'sutazai_hwopt\._native\.([a-z_]+)' extension.*/  compiling core \1/"; then
    echo "bootstrap: the build failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
else
  echo "bootstrap: compiled cores up to date (nothing to compile)"
fi
