#!/bin/sh
# Prints the path of a Python that this project supports (3.12 or newer, JAX's window since
# jax 0.11), for `"$(sh scripts/find_python.sh)" -m venv .venv`.
# Tries python3.12, python3.13 and python3 on PATH (a pyenv shim that refuses to run is skipped),
# then pyenv's installed versions, oldest supported first: 3.12 is the release every dependency
# (TensorFlow, array_record, libtpu) ships wheels for. Exits 1 with one sentence when none is found.
set -u

supported() {  # $1 runs and is Python >= 3.12
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

for candidate in python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && supported "$candidate"; then
    "$candidate" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done

pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
if command -v pyenv >/dev/null 2>&1; then
  pyenv_root="$(pyenv root)"
fi
for version_dir in $(ls -d "$pyenv_root"/versions/3.1[2-9]* 2>/dev/null | sort -V); do
  if supported "$version_dir/bin/python"; then
    echo "$version_dir/bin/python"
    exit 0
  fi
done

echo "find_python.sh: no Python 3.12 or newer found (tried python3.12, python3.13, python3 and" \
  "pyenv's versions); install one (e.g. 'pyenv install 3.12') and run again." >&2
exit 1
