//! Evaluation of a percentage flag with two conditions.

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_flags::{Context, FlagSet};

const FLAGS: &str = r#"
experimental_cleo_optimization:
  enabled: true
  percentage: 25.0
  environment: production
  conditions:
    - { type: label, value: "priority=high", operator: equals }
    - { field: task_complexity, operator: IN, values: [simple, medium] }
"#;

fn evaluate(c: &mut Criterion) {
    let flags = FlagSet::parse("flags.yaml", FLAGS, "production").unwrap();
    let ctx = Context::from_pairs([
        ("user_id", "user-4242"),
        ("priority", "high"),
        ("task_complexity", "simple"),
    ]);
    c.bench_function("percentage flag, two conditions", |b| {
        b.iter(|| flags.evaluate(std::hint::black_box("experimental_cleo_optimization"), &ctx))
    });
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
