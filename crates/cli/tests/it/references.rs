//! `flotilla validate` catches templates that read what is not there: a step that does not
//! exist or may not have run, an input a closed schema forbids, a flag the flag file lacks;
//! each at file:line:col with a suggestion when a name is close.

use crate::app::flotilla;

fn validate(yaml: &str, flags: Option<&str>) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("agents: { echo: { kind: builtin, builtin: echo } }\n");
    if let Some(f) = flags {
        std::fs::write(dir.path().join("flags.yaml"), f).unwrap();
        text.push_str("flags: { file: flags.yaml }\n");
    }
    text.push_str(yaml);
    std::fs::write(dir.path().join("flotilla.yaml"), &text).unwrap();
    let (code, out, err) = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"], &[]);
    (code, format!("{out}{err}"))
}

#[test]
fn a_reference_to_a_step_that_is_not_there_is_caught_with_a_suggestion() {
    let (code, out) = validate(
        r#"workflows:
  trip:
    steps:
      - { id: planner, agent: echo }
      - id: book
        agent: echo
        needs: [planner]
        input: { city: "{{ steps.planer.output.city }}" }
"#,
        None,
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("flotilla.yaml:9:") && out.contains("step `book` reads `steps.planer`, but workflow `trip` has no step `planer`; did you mean `planner`?"),
        "{out}"
    );
}

#[test]
fn a_step_reading_one_it_does_not_need_is_caught_and_indirect_needs_count() {
    let (code, out) = validate(
        r#"workflows:
  trip:
    steps:
      - { id: a, agent: echo }
      - { id: b, agent: echo, needs: [a] }
      - { id: c, agent: echo, needs: [b], input: { x: "{{ steps.a.output }}" } }
      - { id: d, agent: echo, when: "steps.c.output.ok" }
"#,
        None,
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "step `d` reads `steps.c`, which may not have run yet: add `c` to its `needs`"
        ),
        "{out}"
    );
    assert!(out.contains("flotilla.yaml:8:"), "{out}");
    assert!(
        !out.contains("step `c` reads"),
        "c needs a through b: {out}"
    );
}

#[test]
fn inputs_a_closed_schema_forbids_and_outputs_of_missing_steps_are_caught() {
    let (code, out) = validate(
        r#"workflows:
  trip:
    input_schema: { type: object, additionalProperties: false, properties: { city: { type: string } } }
    steps:
      - { id: a, agent: echo, prompt: "Weather in {{ input.ctiy }}" }
    output: { plan: "{{ steps.b.output }}" }
"#,
        None,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("step `a` reads `input.ctiy`, which the workflow's input_schema does not allow; did you mean `city`?"), "{out}");
    assert!(
        out.contains(
            "the output of workflow `trip` reads `steps.b`, but workflow `trip` has no step `b`"
        ),
        "{out}"
    );
    assert!(out.contains("flotilla.yaml:6:"), "{out}");
}

#[test]
fn a_flag_the_flag_file_does_not_define_is_caught() {
    let flags = "beta_mode: { enabled: true }\n";
    let (code, out) = validate(
        r#"workflows:
  trip:
    steps:
      - { id: a, agent: echo, when: "flag('beta_mod')" }
"#,
        Some(flags),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("flotilla.yaml:6:") && out.contains("step `a` asks for flag `beta_mod`, which flags.file does not define; did you mean `beta_mode`?"), "{out}");
    let (code, out) = validate(
        r#"workflows:
  trip:
    steps:
      - { id: a, agent: echo, when: "flag('beta_mode')" }
      - { id: b, agent: echo, needs: [a], input: "{{ steps.a.output }}" }
"#,
        Some(flags),
    );
    assert_eq!(code, 0, "{out}");
}
