// Validates every object of the given YAML files with the kubernetes-models packages from
// npm (Kubernetes kinds, Argo Rollouts, ArgoCD, prometheus-operator CRDs).
// Usage: node validate-models.mjs NODE_MODULES_DIR FILE...
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(join(modules, p)).href);
const yaml = await load("js-yaml/dist/js-yaml.mjs");

function modelPath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "argoproj.io" && kind === "Application") return `@kubernetes-models/argo-cd/argoproj.io/${version}/${kind}.js`;
  if (group === "argoproj.io") return `@kubernetes-models/argo-rollouts/argoproj.io/${version}/${kind}.js`;
  if (group === "monitoring.coreos.com") return `@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}/${kind}.js`;
  return `kubernetes-models/${group || ""}${group ? "/" : ""}${version}/${kind}.js`;
}

let checked = 0;
const failures = [];
for (const file of files) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || !doc.kind || doc.kind === "Kustomization") continue;
    const path = modelPath(doc.apiVersion, doc.kind);
    try {
      const mod = await load(path);
      new mod[doc.kind](doc).validate();
      checked += 1;
    } catch (e) {
      failures.push(`${file}: ${doc.kind} ${doc.metadata?.name}: ${e.message}`);
    }
  }
}
console.log(`validated ${checked} objects`);
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
