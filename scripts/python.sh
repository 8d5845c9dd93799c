# A virtualenv with the Python tools the tests drive (scripts/python-tools.txt), from PyPI.
# Source it, then: ensure_python_tools; it puts the venv's bin/ first on PATH.
ensure_python_tools() {
  local venv requirements stamp
  venv="$(pwd)/target/tools/venv"
  requirements="$(pwd)/scripts/python-tools.txt"
  stamp="$venv/.requirements"
  if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    ensure_packages_now python3-venv
  fi
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || return 1
  fi
  if ! cmp -s "$requirements" "$stamp"; then
    echo "installing Python tools into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" || return 1
    cp "$requirements" "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}
