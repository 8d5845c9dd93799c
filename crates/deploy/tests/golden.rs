//! Golden files: the full output for the demo and the production example, byte for byte
//! (`cargo insta review` after an intended change).

mod examples;

#[test]
fn demo_output_is_unchanged() {
    for f in examples::files("demo") {
        insta::assert_snapshot!(format!("demo__{}", f.path.replace('/', "__")), f.contents);
    }
}

#[test]
fn production_output_is_unchanged() {
    for f in examples::files("production") {
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
    }
    assert!(files.iter().any(|f| f.contents.contains("secretKeyRef")));
}
