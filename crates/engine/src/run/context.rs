//! What templates and `when:` conditions of a run see: its input, metadata, the outputs
//! of finished steps, and `flag('name')`.

use flotilla_spec::template;
use serde_json::{Map, Value, json};

use crate::run::Compiled;

pub(crate) fn context_value(
    compiled: &Compiled,
    outputs: &[Option<Value>],
    input: &Value,
    metadata: &Value,
    run_id: &str,
) -> Value {
    let steps: Map<String, Value> = compiled
        .dag
        .ids
        .iter()
        .zip(outputs)
        .filter_map(|(id, out)| out.as_ref().map(|o| (id.clone(), json!({"output": o}))))
        .collect();
    json!({
        "input": input,
        "metadata": metadata,
        "steps": steps,
        "run": {"id": run_id, "workflow": compiled.name},
    })
}

pub(crate) fn context(
    compiled: &Compiled,
    outputs: &[Option<Value>],
    input: &Value,
    metadata: &Value,
    run_id: &str,
) -> minijinja::Value {
    template::context(&context_value(compiled, outputs, input, metadata, run_id))
}

/// `ctx` plus `flag('name')`, evaluated for the run: the flag context is the run's
/// metadata and input fields (input wins), e.g. `user_id`, `priority`.
pub(crate) fn with_flags(
    ctx: minijinja::Value,
    flags: &flotilla_flags::Flags,
    input: &Value,
    metadata: &Value,
) -> minijinja::Value {
    let mut fields = metadata.as_object().cloned().unwrap_or_default();
    if let Some(i) = input.as_object() {
        fields.extend(i.clone());
    }
    let flag_ctx = flotilla_flags::Context::from_json(&fields);
    let flags = flags.clone();
    let flag = minijinja::Value::from_function(move |name: &str| -> bool {
        flags.evaluate(name, &flag_ctx).is_some_and(|e| e.enabled)
    });
    minijinja::context! { flag => flag, ..ctx }
}
