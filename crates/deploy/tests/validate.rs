//! The generated artifacts checked by the real tools `scripts/test` installs: the Kubernetes
//! schemas (kubernetes-validate, strict), the CRD schemas (kubernetes-models from npm),
//! `kubectl kustomize`, `promtool`, the Compose and GitHub Actions schemas
//! (check-jsonschema) and yamllint.

mod examples;

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_deploy::write_files;

fn tool(name: &str) -> bool {
    if Command::new(name).arg("--help").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI=true but {name} is missing: scripts/test installs it"
    );
    eprintln!("skipped: {name} is not installed (scripts/test installs it)");
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn generated(which: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &examples::files(which), false).unwrap();
    dir
}

/// Renders every overlay with `kubectl kustomize` into `rendered/<env>.yaml`, and the Helm
/// chart with each environment's values into `rendered/helm-<env>.yaml`, after checking
/// that both give the same objects.
fn render(dir: &Path) -> Vec<PathBuf> {
    let rendered = dir.join("rendered");
    std::fs::create_dir_all(&rendered).unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("kubernetes/overlays"))
        .unwrap()
        .flatten()
    {
        let env = e.file_name().to_string_lossy().into_owned();
        let text = run(Command::new("kubectl").arg("kustomize").arg(e.path()));
        assert!(text.contains("kind: Deployment"), "{env}: {text}");
        let file = rendered.join(format!("{env}.yaml"));
        let chart = helm_template(dir, &env);
        assert_eq!(
            objects(&chart),
            objects(&text),
            "{env}: the chart and the overlay differ"
        );
        std::fs::write(&file, text).unwrap();
        out.push(file);
        let file = rendered.join(format!("helm-{env}.yaml"));
        std::fs::write(&file, chart).unwrap();
        out.push(file);
    }
    out.sort();
    out
}

/// `helm template` of the chart with `values-<env>.yaml`, in the overlay's namespace.
fn helm_template(dir: &Path, env: &str) -> String {
    let chart = dir.join("helm/flotilla");
    run(Command::new("helm")
        .args(["lint", "--strict"])
        .arg(&chart)
        .arg("-f")
        .arg(chart.join(format!("values-{env}.yaml"))));
    let out = Command::new("helm")
        .args(["template", "flotilla"])
        .arg(&chart)
        .arg("-f")
        .arg(chart.join(format!("values-{env}.yaml")))
        .args(["--namespace", &format!("agents-{env}"), "--skip-tests"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML stream, by kind and name.
fn objects(text: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(["---"]) {
        if line == "---" {
            docs.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    let keep = |v: &str| Some(format!("${{{v}}}"));
    docs.iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|d| {
            let (v, _) = flotilla_spec::yaml::parse("rendered", d, &keep).unwrap();
            (format!("{}/{}", v["kind"], v["metadata"]["name"]), v)
        })
        .collect()
}

#[test]
fn kubernetes_objects_pass_the_kubernetes_and_crd_schemas_and_overlays_and_the_chart_render_alike()
{
    if !(tool("kubectl") && tool("helm") && tool("kubernetes-validate") && tool("node")) {
        return;
    }
    let modules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/node/node_modules");
    assert!(
        modules.join("kubernetes-models").exists() || std::env::var("CI").is_err(),
        "CI=true but the kubernetes-models npm packages are missing"
    );
    {
        let which = "production";
        let dir = generated(which);
        let rendered = render(dir.path());
        assert_eq!(
            rendered.len(),
            4,
            "{which}: staging and production, from the overlays and from the chart"
        );
        let mut files = yaml_files(&dir.path().join("kubernetes/base"));
        files.retain(|f| !f.ends_with("kustomization.yaml"));
        files.extend(rendered.iter().cloned());
        // Kubernetes kinds against the Kubernetes schemas, unknown fields refused.
        let out = run(Command::new("kubernetes-validate")
            .arg("--strict")
            .arg("--quiet")
            .args(&files));
        assert!(!out.contains("ERROR"), "{which}: {out}");
        if !modules.join("kubernetes-models").exists() {
            return;
        }
        // Every object, CRDs included, against the kubernetes-models schemas.
        files.extend(yaml_files(&dir.path().join("argocd")));
        let out = run(Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate-models.mjs"))
            .arg(&modules)
            .args(&files));
        let count: usize = out
            .trim()
            .trim_start_matches("validated ")
            .trim_end_matches(" objects")
            .parse()
            .unwrap_or(0);
        assert!(
            count >= 40,
            "{which}: only {count} objects validated: {out}"
        );
    }
}

#[test]
fn prometheus_rules_and_config_pass_promtool() {
    if !tool("promtool") {
        return;
    }
    {
        let dir = generated("production");
        // The PrometheusRule's groups as a rules file.
        let text = std::fs::read_to_string(dir.path().join("kubernetes/base/prometheusrule.yaml"))
            .unwrap();
        let (rule, _) =
            flotilla_spec::yaml::parse("prometheusrule.yaml", &text, &|_| None).unwrap();
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, rule["spec"].to_string()).unwrap();
        let out = run(Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules));
        // Nine, and BackupStale: the production example schedules backups.
        assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
        run(Command::new("promtool")
            .args(["check", "config"])
            .arg(dir.path().join("compose/prometheus.yml")));
    }
}

#[test]
fn compose_and_ci_files_pass_their_schemas_and_all_yaml_passes_yamllint() {
    if !(tool("check-jsonschema") && tool("yamllint")) {
        return;
    }
    for which in ["demo", "production"] {
        let dir = generated(which);
        run(Command::new("check-jsonschema")
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(dir.path().join("compose/compose.yaml")));
        run(Command::new("check-jsonschema")
            .args(["--builtin-schema", "vendor.github-workflows"])
            .args(yaml_files(&dir.path().join("ci/.github/workflows"))));
        let mut files = yaml_files(dir.path());
        // The copied flotilla.yaml and flags.yaml are the user's own files; Helm templates
        // are YAML only once rendered (helm lint checks them).
        files.retain(|f| !f.ends_with("flotilla.yaml") && !f.ends_with("flags.yaml"));
        files.retain(|f| !f.components().any(|c| c.as_os_str() == "templates"));
        run(Command::new("yamllint")
            .args(["--strict", "-d", "{extends: default, rules: {line-length: disable, document-start: disable, indentation: {spaces: 2, indent-sequences: whatever}}}"])
            .args(&files));
    }
}

#[test]
fn the_chart_refuses_a_value_of_the_wrong_shape() {
    if !tool("helm") {
        return;
    }
    let dir = generated("production");
    let chart = dir.path().join("helm/flotilla");
    for (set, says) in [
        ("replicas=three", "replicas"),
        ("resources.limits.cpu=lots", "cpu"),
        ("colour=blue", "colour"),
    ] {
        let out = Command::new("helm")
            .args(["template", "flotilla"])
            .arg(&chart)
            .args(["--set-string", set])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
        assert!(err.contains(says), "{set}: {err}");
    }
}

#[test]
fn the_chart_can_leave_out_the_prometheus_operator_objects() {
    if !tool("helm") {
        return;
    }
    let dir = generated("production");
    let chart = dir.path().join("helm/flotilla");
    let render = |extra: &[&str]| {
        run(Command::new("helm")
            .args(["template", "flotilla"])
            .arg(&chart)
            .args(extra))
    };
    let all = render(&[]);
    assert!(all.contains("kind: PodMonitor") && all.contains("kind: PrometheusRule"));
    let bare = render(&[
        "--set",
        "monitoring.podMonitor=false",
        "--set",
        "monitoring.prometheusRule=false",
    ]);
    assert!(
        !bare.contains("kind: PodMonitor") && !bare.contains("kind: PrometheusRule"),
        "{bare}"
    );
    assert!(bare.contains("kind: Deployment"));
}
