//! The two configurations the deploy tests generate from: the embedded demo and
//! `examples/production.yaml` (with `examples/flags.yaml`).

use flotilla_deploy::File;
use flotilla_deploy::generate::{Input, Target, generate};
use flotilla_spec::{Config, Loader, Source};

pub const DEMO: &str = include_str!("../../../../examples/demo.yaml");
pub const PRODUCTION: &str = include_str!("../../../../examples/production.yaml");
pub const FLAGS: &str = include_str!("../../../../examples/flags.yaml");

/// The configuration in `text`; variables stay references, as generation needs no values.
pub fn config(name: &str, text: &str) -> Config {
    config_with(name, text, &|v: &str| {
        (v != "DATABASE_URL").then(|| format!("${{{v}}}"))
    })
}

/// The configuration in `text`, variables looked up with `lookup`.
pub fn config_with(name: &str, text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Config {
    Loader {
        base: Source {
            name: name.into(),
            text: text.into(),
            path: None,
        },
        env_name: None,
        vars: lookup,
        var_names: Vec::new(),
        flags: Vec::new(),
    }
    .load()
    .unwrap_or_else(|e| panic!("{e}"))
    .config
}

/// Every file for the demo (`"demo"`: its SQLite store has no Kubernetes output) or the
/// production example.
pub fn files(which: &str) -> Vec<File> {
    let (text, flags, targets) = match which {
        "demo" => (
            DEMO,
            None,
            &[Target::Compose, Target::Argocd, Target::Ci][..],
        ),
        _ => (PRODUCTION, Some(FLAGS), &Target::ALL[..]),
    };
    let config = config(which, text);
    generate(
        &Input {
            config: &config,
            config_text: text,
            flags_text: flags,
            agent_files: &[],
        },
        targets,
        &[],
    )
    .unwrap()
}
