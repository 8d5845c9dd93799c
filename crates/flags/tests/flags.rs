//! The flag engine: the seed's file as written, sticky and well-distributed percentages,
//! conditions, error positions, hot reload, and Unleash's client specification.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_flags::{Context, FlagMetrics, FlagSet, Flags, Reason};

/// Seed 000's ConfigMap `flags.yaml`, verbatim.
const SEED: &str = r#"
multi_agent_workflow:
  enabled: true
  percentage: 100.0
  environment: production

enhanced_monitoring:
  enabled: true
  percentage: 100.0
  environment: production

experimental_cleo_optimization:
  enabled: true
  percentage: 25.0  # Gradual rollout
  environment: production
  conditions:
    - type: "label"
      value: "priority=high"
      operator: "equals"

advanced_tess_testing:
  enabled: true
  percentage: 50.0
  environment: production
  conditions:
    - type: "task_complexity"
      value: "simple"
      operator: "equals"

beta_rex_performance_mode:
  enabled: false  # Disabled in production initially
  percentage: 0.0
  environment: production
  conditions:
    - type: "opt_in"
      value: "true"
      operator: "equals"
"#;

fn ctx(pairs: &[(&str, &str)]) -> Context {
    Context::from_pairs(pairs.iter().copied())
}

#[test]
fn the_seeds_five_flags_load_as_written_and_mean_what_they_say() {
    let flags = FlagSet::parse("flags.yaml", SEED, "production").unwrap();
    assert_eq!(flags.list().len(), 5);
    let user = ctx(&[("user_id", "42")]);
    let on = flags.evaluate("multi_agent_workflow", &user).unwrap();
    // Limited to an environment: a targeting match there.
    assert_eq!((on.enabled, on.reason), (true, Reason::TargetingMatch));
    // Only in production.
    let staging = ctx(&[("user_id", "42"), ("environment", "staging")]);
    let off = flags.evaluate("multi_agent_workflow", &staging).unwrap();
    assert_eq!((off.enabled, off.reason), (false, Reason::Default));
    // Disabled for everyone, whatever the context.
    let rex = flags
        .evaluate(
            "beta_rex_performance_mode",
            &ctx(&[("user_id", "1"), ("opt_in", "true")]),
        )
        .unwrap();
    assert_eq!((rex.enabled, rex.reason), (false, Reason::Disabled));
    // The label condition must hold, then 25% of users get it.
    let high: Vec<bool> = (0..2000)
        .map(|i| {
            let id = i.to_string();
            flags.is_enabled(
                "experimental_cleo_optimization",
                &ctx(&[("user_id", &id), ("priority", "high")]),
            )
        })
        .collect();
    let share = high.iter().filter(|b| **b).count() as f64 / 2000.0;
    assert!((0.2..0.3).contains(&share), "{share}");
    assert!((0..200).all(|i| !flags.is_enabled(
        "experimental_cleo_optimization",
        &ctx(&[("user_id", &i.to_string()), ("priority", "low")])
    )));
    assert!(flags.evaluate("no_such_flag", &user).is_none());
}

#[test]
fn percentages_are_sticky_well_distributed_and_only_grow() {
    let at = |pct: u32| {
        FlagSet::parse(
            "flags.yaml",
            &format!("rollout:\n  enabled: true\n  percentage: {pct}\n"),
            "production",
        )
        .unwrap()
    };
    let (quarter, half) = (at(25), at(50));
    let keys: Vec<String> = (0..100_000)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let on_at = |flags: &FlagSet| -> Vec<bool> {
        keys.iter()
            .map(|k| flags.is_enabled("rollout", &ctx(&[("user_id", k)])))
            .collect()
    };
    let q = on_at(&quarter);
    let share = q.iter().filter(|b| **b).count() as f64 / keys.len() as f64;
    assert!((0.24..=0.26).contains(&share), "25% rollout gave {share}");
    assert_eq!(
        q,
        on_at(&quarter),
        "the same key always gets the same answer"
    );
    let h = on_at(&half);
    assert!(
        q.iter().zip(&h).all(|(was, now)| !was || *now),
        "raising the percentage turned some keys off"
    );
    let share = h.iter().filter(|b| **b).count() as f64 / keys.len() as f64;
    assert!((0.49..=0.51).contains(&share), "50% rollout gave {share}");
}

#[test]
fn a_percentage_without_a_targeting_key_is_off_every_time() {
    let flags = FlagSet::parse(
        "flags.yaml",
        "rollout:\n  enabled: true\n  percentage: 50\n",
        "production",
    )
    .unwrap();
    let answers: Vec<_> = (0..200)
        .map(|_| flags.evaluate("rollout", &ctx(&[("plan", "pro")])))
        .collect();
    assert!(answers.iter().all(|e| {
        e.as_ref()
            .is_some_and(|e| !e.enabled && e.reason == flotilla_flags::Reason::Default)
    }));
    // With a key, the rollout decides.
    let on = (0..200)
        .filter(|i| flags.is_enabled("rollout", &ctx(&[("user_id", &format!("u{i}"))])))
        .count();
    assert!((50..150).contains(&on), "{on} of 200 on");
}

#[test]
fn a_flag_on_for_everyone_is_static() {
    let flags = FlagSet::parse("flags.yaml", "everyone:\n  enabled: true\n", "production").unwrap();
    let e = flags.evaluate("everyone", &ctx(&[])).unwrap();
    assert_eq!((e.enabled, e.reason), (true, Reason::Static));
}

#[test]
fn unleash_style_conditions_work_too() {
    let flags = FlagSet::parse(
        "flags.yaml",
        r#"
gpu_planner:
  enabled: true
  conditions:
    - { field: task_complexity, operator: IN, values: [simple, medium] }
    - { field: budget, operator: NUM_GT, value: "1000" }
    - { field: region, operator: STR_STARTS_WITH, values: [eu-], inverted: true }
"#,
        "production",
    )
    .unwrap();
    let yes = ctx(&[
        ("task_complexity", "simple"),
        ("budget", "1500"),
        ("region", "us-east"),
    ]);
    let e = flags.evaluate("gpu_planner", &yes).unwrap();
    assert_eq!((e.enabled, e.reason), (true, Reason::TargetingMatch));
    for no in [
        ctx(&[
            ("task_complexity", "hard"),
            ("budget", "1500"),
            ("region", "us-east"),
        ]),
        ctx(&[
            ("task_complexity", "simple"),
            ("budget", "10"),
            ("region", "us-east"),
        ]),
        ctx(&[
            ("task_complexity", "simple"),
            ("budget", "1500"),
            ("region", "eu-west"),
        ]),
    ] {
        assert!(!flags.is_enabled("gpu_planner", &no));
    }
}

#[test]
fn a_broken_file_is_refused_whole_with_positions() {
    let err = FlagSet::parse(
        "flags.yaml",
        "good:\n  enabled: true\nbad:\n  enabled: true\n  percentage: 140\nworse:\n  enabled: yes please\n  colour: red\nodd:\n  enabled: true\n  conditions:\n    - { type: tier, value: gold, operator: resembles }\n",
        "production",
    )
    .unwrap_err();
    let text: Vec<String> = err.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    assert!(
        all.contains("flags.yaml:5:3: bad.percentage: percentage must be between 0 and 100"),
        "{all}"
    );
    assert!(
        all.contains("flags.yaml:8:3: worse.colour: unknown field"),
        "{all}"
    );
    assert!(
        all.contains("flags.yaml:12:") && all.contains("unknown operator `resembles`"),
        "{all}"
    );
    let yaml = FlagSet::parse("flags.yaml", "a: [unclosed\n", "production").unwrap_err();
    assert!(
        yaml[0].to_string().starts_with("flags.yaml:"),
        "{}",
        yaml[0]
    );
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Kubernetes' ConfigMap layout: `flags.yaml -> ..data/flags.yaml`, `..data -> ..<ts>`,
/// updated by writing a new `..<ts>` directory and renaming a new `..data` link over the old.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    version: u32,
}

impl ConfigMapDir {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut me = ConfigMapDir { dir, version: 0 };
        me.publish(text);
        std::os::unix::fs::symlink("..data/flags.yaml", me.dir.path().join("flags.yaml")).unwrap();
        me
    }

    fn publish(&mut self, text: &str) {
        self.version += 1;
        let ts = format!("..2026_11_22_{:04}", self.version);
        std::fs::create_dir(self.dir.path().join(&ts)).unwrap();
        write(&self.dir.path().join(&ts).join("flags.yaml"), text);
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("flags.yaml")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_on_symlink_swap_keeps_the_last_good_flags_and_survives_deletion() {
    let on = "feature:\n  enabled: true\n";
    let off = "feature:\n  enabled: false\n";
    let mut cm = ConfigMapDir::new(on);
    let set = FlagSet::parse("flags.yaml", on, "production").unwrap();
    let flags = Flags::new(set, FlagMetrics::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = flotilla_flags::watch(flags.clone(), cm.path(), "production".into(), stop);
    let user = ctx(&[("user_id", "7")]);
    let is_on = || flags.snapshot().is_enabled("feature", &user);

    cm.publish(off);
    tokio::task::block_in_place(|| wait_for("the swap to turn it off", || !is_on()));

    cm.publish("feature:\n  enabled: [broken\n");
    tokio::task::block_in_place(|| {
        wait_for("the broken file to be counted", || {
            flags.metrics().reload_errors.get() == 1
        })
    });
    assert!(!is_on(), "the last good flags stay live");

    cm.publish(on);
    tokio::task::block_in_place(|| wait_for("the fixed file to load", is_on));

    // Deleted: the flags stay; restored: they change again.
    std::fs::remove_file(cm.path()).unwrap();
    tokio::task::block_in_place(|| {
        wait_for("the deletion to be counted", || {
            flags.metrics().reload_errors.get() == 2
        })
    });
    assert!(is_on());
    write(&cm.dir.path().join("flags.yaml"), off);
    tokio::task::block_in_place(|| wait_for("the restored file to load", || !is_on()));
    assert_eq!(flags.metrics().reload_errors.get(), 2);

    stop_tx.send(true).unwrap();
    task.await.unwrap();
}

/// Unleash's client specification (npm `@unleash/client-specification`, installed by
/// `scripts/test`): every `tests` and `variantTests` case of every file in its index.
#[test]
fn unleash_client_specification() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/tools/node/node_modules/@unleash/client-specification/specifications");
    let Ok(index) = std::fs::read_to_string(dir.join("index.json")) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but the Unleash client specification is missing: scripts/test installs it"
        );
        eprintln!(
            "skipped: the Unleash client specification is not installed (scripts/test installs it)"
        );
        return;
    };
    let files: Vec<String> = serde_json::from_str(&index).unwrap();
    let (mut cases, mut failures) = (0, Vec::new());
    for file in &files {
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let flags = FlagSet::parse(file, &spec["state"].to_string(), "")
            .unwrap_or_else(|e| panic!("{file}: {}", e[0]));
        for t in spec["tests"].as_array().into_iter().flatten() {
            cases += 1;
            let c = Context::from_unleash(t["context"].clone()).unwrap();
            let name = t["toggleName"].as_str().unwrap();
            let got = flags.evaluate(name, &c).is_some_and(|e| e.enabled);
            if got != t["expectedResult"] {
                failures.push(format!(
                    "{file}: {}: expected {}",
                    t["description"], t["expectedResult"]
                ));
            }
        }
        for t in spec["variantTests"].as_array().into_iter().flatten() {
            cases += 1;
            let c = Context::from_unleash(t["context"].clone()).unwrap();
            let (enabled, name, feature_enabled, payload) =
                flags.variant(t["toggleName"].as_str().unwrap(), &c);
            let want = &t["expectedResult"];
            let payload_ok = want
                .get("payload")
                .is_none_or(|p| p.is_null() && payload.is_none() || Some(p) == payload.as_ref());
            if want["enabled"] != enabled
                || want["name"] != name.as_str()
                || want
                    .get("feature_enabled")
                    .is_some_and(|f| *f != feature_enabled)
                || !payload_ok
            {
                failures.push(format!(
                    "{file}: {} (variant): expected {want}, got {name} {enabled}",
                    t["description"]
                ));
            }
        }
    }
    println!(
        "Unleash client specification: {cases} cases in {} files",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases >= 250, "only {cases} cases ran");
}
