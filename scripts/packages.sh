# Installs missing Debian packages. Source it, then: ensure_packages CMD:PACKAGE ...
# (a CMD found on PATH means its PACKAGE is already there).
ensure_packages() {
  local missing=()
  local pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  ensure_packages_now "${missing[@]}"
}

# Installs the named Debian packages.
ensure_packages_now() {
  echo "installing: $*" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
