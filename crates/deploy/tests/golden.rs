//! Golden files: the full output for the demo and the production example, byte for byte
//! (`cargo insta review` after an intended change).

mod examples;

/// The runbooks are copies of `docs/runbooks/`: checked against them, not snapshotted.
fn runbook_copied(f: &flotilla_deploy::File) -> bool {
    let Some(name) = f.path.strip_prefix("runbooks/") else {
        return false;
    };
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks");
    assert_eq!(
        std::fs::read_to_string(docs.join(name)).unwrap(),
        f.contents,
        "{}",
        f.path
    );
    true
}

#[test]
fn demo_output_is_unchanged() {
    for f in examples::files("demo")
        .iter()
        .filter(|f| !runbook_copied(f))
    {
        insta::assert_snapshot!(format!("demo__{}", f.path.replace('/', "__")), f.contents);
    }
}

#[test]
fn production_output_is_unchanged() {
    for f in examples::files("production")
        .iter()
        .filter(|f| !runbook_copied(f))
    {
        insta::assert_snapshot!(
            format!("production__{}", f.path.replace('/', "__")),
            f.contents
        );
    }
}

#[test]
fn generation_is_deterministic_and_never_writes_a_secret_value() {
    assert_eq!(examples::files("production"), examples::files("production"));
    // Even with the secrets set where flotilla deploy generate runs.
    let canary = "canary-db-password-4417";
    let lookup = |v: &str| match v {
        "DB_PASSWORD" | "OPENAI_API_KEY" => Some(canary.to_owned()),
        _ => None,
    };
    let config = examples::config_with("production.yaml", examples::PRODUCTION, &lookup);
    let files = flotilla_deploy::generate::generate(
        &flotilla_deploy::generate::Input {
            config: &config,
            config_text: examples::PRODUCTION,
            flags_text: Some(examples::FLAGS),
            agent_files: &[],
        },
        &flotilla_deploy::generate::Target::ALL,
        &[],
    )
    .unwrap();
    for f in &files {
        assert!(
            !f.contents.contains(canary),
            "{} holds a secret value",
            f.path
        );
        assert!(
            !f.contents.contains("example.invalid"),
            "{} links nowhere",
            f.path
        );
    }
    // The alerts link to the runbooks written beside the manifests, in the deploy repository.
    let rules = files
        .iter()
        .find(|f| f.path == "kubernetes/base/prometheusrule.yaml")
        .unwrap();
    assert!(
        rules.contents.contains("https://git.example.com/platform/flotilla-deploy/blob/main/deploy/runbooks/FlotillaDown.md"),
        "{}",
        rules.contents
    );
    assert!(files.iter().any(|f| f.path == "runbooks/FlotillaDown.md"));
    assert!(files.iter().any(|f| f.contents.contains("secretKeyRef")));
}

#[test]
fn a_sqlite_store_behind_several_pods_is_refused() {
    let demo = examples::config("demo", examples::DEMO);
    let input = flotilla_deploy::generate::Input {
        config: &demo,
        config_text: examples::DEMO,
        flags_text: None,
        agent_files: &[],
    };
    let err = flotilla_deploy::generate::generate(
        &input,
        &[flotilla_deploy::generate::Target::Kubernetes],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("SQLite"), "{err}");
    assert!(err.contains("3 replicas"), "{err}");
    assert!(err.contains("HorizontalPodAutoscaler"), "{err}");
    assert!(err.contains("Argo Rollout"), "{err}");
    // One pod, no autoscaler, a rolling update: allowed.
    let single = examples::config(
        "single",
        &format!(
            "{}\ndeploy: {{ replicas: 1, autoscaling: {{ enabled: false }}, rollout: {{ strategy: rolling }}, environments: {{ staging: {{}}, production: {{}} }} }}\n",
            examples::DEMO
        ),
    );
    let input = flotilla_deploy::generate::Input {
        config: &single,
        ..input
    };
    let files = flotilla_deploy::generate::generate(
        &input,
        &[flotilla_deploy::generate::Target::Kubernetes],
        &[],
    )
    .unwrap();
    assert!(!files.iter().any(|f| f.path.ends_with("hpa.yaml")));
    assert!(!files.iter().any(|f| f.path.ends_with("rollout.yaml")));
}

#[test]
fn pods_take_no_service_links_and_each_environment_has_its_host() {
    let files = examples::files("production");
    let find = |p: &str| {
        files
            .iter()
            .find(|f| f.path == p)
            .unwrap_or_else(|| panic!("no {p}"))
            .contents
            .clone()
    };
    assert!(find("kubernetes/base/deployment.yaml").contains("enableServiceLinks: false"));
    let staging = find("kubernetes/overlays/staging/kustomization.yaml");
    let production = find("kubernetes/overlays/production/kustomization.yaml");
    let host = |text: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("value: ").filter(|v| v.contains('.')))
            .map(str::to_owned)
    };
    assert_ne!(host(&staging), host(&production), "{staging}\n{production}");
    let staging_ci = find("ci/.github/workflows/deploy-staging.yml");
    assert!(
        staging_ci.contains(&host(&staging).unwrap()),
        "the smoke test calls the staging host: {staging_ci}"
    );
    assert!(
        staging_ci.contains("/version") && staging_ci.contains("revision"),
        "the smoke test waits for the new revision: {staging_ci}"
    );
    // CI logs in to the registry it pushes to, and needs nothing from flotilla's repository.
    let build = find("ci/.github/workflows/build.yml");
    assert!(build.contains("registry: registry.example.com"), "{build}");
    assert!(
        build.contains("tags: registry.example.com/platform/flotilla:"),
        "{build}"
    );
    assert!(!build.contains("scripts/test"), "{build}");
    // The production strategy input picks the Rollout's strategy.
    let production_ci = find("ci/.github/workflows/deploy-production.yml");
    assert!(
        production_ci.contains("Choose the rollout strategy")
            && production_ci.contains("strategy.yaml"),
        "{production_ci}"
    );
    for s in ["canary", "blue-green", "rolling"] {
        find(&format!(
            "kubernetes/overlays/production/strategies/{s}.yaml"
        ));
    }
}

#[test]
fn argocd_can_deploy_the_chart_with_each_environments_values() {
    let text = examples::PRODUCTION.replacen(
        "argocd: { source: kustomize }",
        "argocd: { source: helm }",
        1,
    );
    assert_ne!(text, examples::PRODUCTION);
    let config = examples::config("production", &text);
    let files = flotilla_deploy::generate::generate(
        &flotilla_deploy::generate::Input {
            config: &config,
            config_text: &text,
            flags_text: Some(examples::FLAGS),
            agent_files: &[],
        },
        &[flotilla_deploy::generate::Target::Argocd],
        &[],
    )
    .unwrap();
    let staging = files
        .iter()
        .find(|f| f.path == "argocd/staging.yaml")
        .unwrap();
    let (app, _) =
        flotilla_spec::yaml::parse("staging.yaml", &staging.contents, &|_| None).unwrap();
    let source = &app["spec"]["source"];
    assert_eq!(source["path"], "deploy/helm/flotilla", "{source}");
    assert_eq!(
        source["helm"]["valueFiles"][0], "values-staging.yaml",
        "{source}"
    );
    assert_eq!(app["spec"]["destination"]["namespace"], "agents-staging");
}
