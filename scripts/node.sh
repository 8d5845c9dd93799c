# npm packages the tests drive (scripts/node-tools/package.json), installed into
# target/tools/node. Source it, then: ensure_node_tools.
ensure_node_tools() {
  local dir stamp
  dir="$(pwd)/target/tools/node"
  stamp="$dir/.package.json"
  ensure_packages node:nodejs npm:npm || return 1
  mkdir -p "$dir"
  if ! cmp -s scripts/node-tools/package.json "$stamp"; then
    echo "installing npm packages into $dir" >&2
    cp scripts/node-tools/package.json "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error) || return 1
    cp scripts/node-tools/package.json "$stamp"
  fi
}
